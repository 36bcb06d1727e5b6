"""Regression: a crash between replace_dir's two renames leaves only `.<name>.old`; the next
replace must not throw that copy away — neither when it fails nor when it succeeds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.fsutil import recover_dir, replace_dir


def make_dir(path: Path, content: str) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_text(content, "utf-8")
    return path


def crashed_between_renames(root: Path) -> Path:
    """`best` renamed away to `.best.old`, the crash came before staging was renamed in."""
    make_dir(root / ".best.old", "previous")
    target = root / "best"
    assert not target.exists()
    return target


def content(path: Path) -> str:
    return (path / "model.safetensors").read_text("utf-8")


def test_a_failing_replace_does_not_lose_the_old_copy(tmp_path: Path) -> None:
    target = crashed_between_renames(tmp_path)
    with pytest.raises(FileNotFoundError):
        replace_dir(tmp_path / ".best.staging", target)  # the staging dir was never written
    # The previous checkpoint is still there, as `best` or recoverable from `.best.old`.
    recover_dir(target)
    assert content(target) == "previous"
    assert not (tmp_path / ".best.old").exists()


def test_the_next_replace_installs_the_new_copy_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    target = crashed_between_renames(tmp_path)
    staging = make_dir(tmp_path / ".best.staging", "new")
    replace_dir(staging, target)
    assert content(target) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_the_next_replace_keeps_the_recovered_copy_as_history(tmp_path: Path) -> None:
    target = crashed_between_renames(tmp_path)
    staging = make_dir(tmp_path / ".best.staging", "new")
    replace_dir(staging, target, keep_old_as=tmp_path / "best-0000010")
    assert content(target) == "new"
    assert content(tmp_path / "best-0000010") == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "best-0000010"]
