"""find_run_checkpoint: the `--checkpoint best|last|PATH` rule every reading command shares."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.errors import CheckpointError
from ml_playground.train.run_checkpoint import find_run_checkpoint


def make(run_dir: Path, *names: str) -> None:
    for name in names:
        (run_dir / "checkpoints" / name).mkdir(parents=True)


def find(run_dir: Path, which: str, notices: list[str], directory_ok: bool = False) -> Path:
    return find_run_checkpoint(
        run_dir,
        which,
        verb="sampling from",
        creator="ml-playground train tiny",
        say=notices.append,
        directory_ok=directory_ok,
    )


def test_best_is_used_when_it_exists(tmp_path: Path) -> None:
    make(tmp_path, "best", "last")
    notices: list[str] = []
    assert find(tmp_path, "best", notices) == tmp_path / "checkpoints" / "best"
    assert notices == []


def test_a_missing_best_falls_back_to_last_and_says_so(tmp_path: Path) -> None:
    make(tmp_path, "last")
    notices: list[str] = []
    assert find(tmp_path, "best", notices) == tmp_path / "checkpoints" / "last"
    assert notices == ["notice: no `best` checkpoint yet; sampling from `last`"]


def test_last_never_falls_back_to_best(tmp_path: Path) -> None:
    make(tmp_path, "best")
    with pytest.raises(CheckpointError) as info:
        find(tmp_path, "last", [])
    assert str(info.value) == (
        f"no checkpoint at {tmp_path / 'checkpoints' / 'last'}; run `ml-playground train tiny` "
        f"first (with the same --workdir and train.run_name)"
    )


def test_no_run_names_the_command_that_creates_it(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"run `ml-playground train tiny` first") as info:
        find(tmp_path, "best", [], directory_ok=True)
    assert str(info.value).endswith(", or pass a checkpoint directory")


def test_an_explicit_path_is_used_as_is(tmp_path: Path) -> None:
    elsewhere = tmp_path / "saved" / "ckpt"
    elsewhere.mkdir(parents=True)
    assert find(tmp_path / "run", str(elsewhere), []) == elsewhere


def test_a_wrong_explicit_path_asks_to_check_it(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        find(tmp_path, str(tmp_path / "nowhere"), [])
    assert str(info.value) == (
        f"no checkpoint at {tmp_path / 'nowhere'}; check the --checkpoint path"
    )
