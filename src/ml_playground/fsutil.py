"""Crash-safe filesystem helpers: fsync and directory replacement by rename.

POSIX cannot rename a directory over a non-empty one, so replacing takes two renames. Between
them the old copy sits at `<name>.old`; `recover_dir` puts it back if a crash hit that instant.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def fsync_tree(directory: Path) -> None:
    """Flush every file under `directory`, then the directory entries themselves."""
    for root, _dirs, files in os.walk(directory):
        for name in files:
            fd = os.open(Path(root) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _old_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def replace_dir(staging: Path, target: Path, keep_old_as: Path | None = None) -> None:
    """Atomically (as far as POSIX allows) make the complete `staging` directory be `target`.

    The previous `target` is deleted, or, with `keep_old_as`, renamed there (checkpoint history).
    """
    fsync_tree(staging)
    recover_dir(target)  # a crash between two renames last time must not cost that copy now
    old = _old_path(target)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    fsync_dir(target.parent)
    if keep_old_as is not None and old.exists():
        shutil.rmtree(keep_old_as, ignore_errors=True)
        os.replace(old, keep_old_as)
        fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(target: Path) -> None:
    """If a crash left only `<name>.old` (between the two renames), restore it as `target`."""
    old = _old_path(target)
    if not target.exists() and old.exists():
        os.replace(old, target)
