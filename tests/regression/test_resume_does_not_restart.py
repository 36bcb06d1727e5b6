"""Regression: training again with a larger `max_iters` continues the run, never restarts at 0."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.train.callbacks import Callback, RunStart
from ml_playground.train.loop import train


class StartIter(Callback):
    def __init__(self) -> None:
        self.start: int | None = None

    def on_train_start(self, event: RunStart) -> None:
        self.start = event.start_iter


def test_resume_does_not_restart(
    make_config: Callable[..., ExperimentConfig], workdir: Path
) -> None:
    config = make_config("train.max_iters=10")
    prepare_dataset(config.data, workdir, config.name)
    first = train(config, workdir)
    metrics = first.run_dir / "metrics.jsonl"
    assert [json.loads(line)["iter"] for line in metrics.read_text("utf-8").splitlines()] == [0, 10]

    start = StartIter()
    second = train(make_config("train.max_iters=20"), workdir, callbacks=[start])
    assert start.start == 10
    iters = [json.loads(line)["iter"] for line in metrics.read_text("utf-8").splitlines()]
    assert iters == [0, 10, 20]  # the new run's first eval is at 20; no second iter 0
    assert second.summary["iters"] == 20
    summary = json.loads((second.run_dir / "summary.json").read_text("utf-8"))
    assert summary["iters"] == 20
