"""Regression: resuming a run that is already past `train.max_iters` must not silently train
"backwards" or overwrite the finished run; resuming one that is exactly done reports it as is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.errors import TrainingError
from ml_playground.train.callbacks import Callback, RunStart
from ml_playground.train.loop import train


class Started(Callback):
    def __init__(self) -> None:
        self.started = False

    def on_train_start(self, event: RunStart) -> None:
        self.started = True


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def test_resume_past_max_iters_is_an_error(
    make_config: Callable[..., ExperimentConfig], workdir: Path
) -> None:
    config = make_config("train.max_iters=20")
    prepare_dataset(config.data, workdir, config.name)
    first = train(config, workdir)
    before = snapshot(first.run_dir)
    assert "summary.json" in before

    with pytest.raises(TrainingError, match=r"at iter 20, past train\.max_iters=10.*--no-resume"):
        train(make_config("train.max_iters=10"), workdir)
    assert snapshot(first.run_dir) == before  # summary, metrics and checkpoints untouched

    # The same max_iters again: nothing to train, the finished run's summary comes back.
    started = Started()
    again = train(config, workdir, callbacks=[started])
    assert again.run_dir == first.run_dir
    assert again.summary == first.summary
    assert not started.started
    assert snapshot(first.run_dir) == before
