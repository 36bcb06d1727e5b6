"""What every exporter shares: the error type, the overwrite guard, staging, sizes, checksums.

An export is written beside its destination (`.<name>.partial`), verified there by reading it
back, and only then renamed into place. So a failed or interrupted export never leaves a
half-written file where a user (or `ollama create`) would pick it up, and `--force` replaces an
old export in one step.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ml_playground.errors import MLPlaygroundError
from ml_playground.fsutil import fsync_dir, replace_dir

MARKER_FILES = ("config.json", "Modelfile", "SHA256SUMS", "model.safetensors")
"""A directory holding one of these looks like an earlier export, so `--force` may replace it."""


class ExportError(MLPlaygroundError):
    """The model, tokenizer or destination cannot be exported as asked."""


@dataclass
class ExportReport:
    """What an export wrote and what it checked: `files` (path, bytes) and one line per check."""

    target: Path
    files: list[tuple[Path, int]] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def human_size(size: int) -> str:
    """Bytes as a short human-readable string (1024-based, as `ls -h` and `du -h` show)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_files(directory: Path) -> list[tuple[Path, int]]:
    """Every file under `directory` (relative paths, sorted) with its size in bytes."""
    return sorted(
        (path.relative_to(directory), path.stat().st_size)
        for path in directory.rglob("*")
        if path.is_file()
    )


def _check_parent(path: Path) -> None:
    """The nearest existing ancestor of `path` must be a directory we can create `path` in."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(f"{parent} is a file, so {path} cannot be created")
            return


def check_file_destination(path: Path, force: bool) -> None:
    """Refuse to overwrite an existing file without `--force`, and never replace a directory."""
    _check_parent(path)
    if path.is_dir():
        raise ExportError(f"{path} is a directory; give a file name (or the directory ending in /)")
    if path.exists() and not force:
        raise ExportError(f"{path} already exists; pass --force to overwrite it")


def check_dir_destination(path: Path, force: bool) -> None:
    """Refuse to replace an existing directory without `--force`.

    Even with `--force`, only an empty directory or one that looks like an earlier export is
    replaced: `--out ~ --force` must not delete a home directory.
    """
    _check_parent(path)
    if path.exists() and not path.is_dir():
        raise ExportError(f"{path} exists and is not a directory; choose another --out")
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not force:
        raise ExportError(f"{path} already exists; pass --force to replace it")
    if not any((path / name).exists() for name in MARKER_FILES):
        raise ExportError(
            f"{path} is not empty and does not look like an earlier export (no "
            f"{', '.join(MARKER_FILES)}); refusing to replace it even with --force"
        )


@contextmanager
def staged_file(target: Path) -> Iterator[Path]:
    """A temporary path beside `target`; renamed onto `target` when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.partial")
    staging.unlink(missing_ok=True)
    try:
        yield staging
        fd = os.open(staging, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(staging, target)
        fsync_dir(target.parent)
    finally:
        staging.unlink(missing_ok=True)


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A fresh directory beside `target`; it replaces `target` when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
