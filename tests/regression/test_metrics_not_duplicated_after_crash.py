"""A crash after an evaluation was logged but before `last` was saved must not leave that
evaluation twice in metrics.jsonl once the run resumes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.train.loop import train


def test_resume_drops_evaluations_logged_after_the_last_checkpoint(
    make_config: Callable[..., ExperimentConfig], workdir: Path
) -> None:
    config = make_config("train.max_iters=10", "train.lr_decay_iters=20")
    prepare_dataset(config.data, workdir, config.name)
    train(config, workdir)
    metrics = workdir / "runs" / "tiny" / "main" / "metrics.jsonl"
    # What a kill between "eval at 15 logged" and "last at 15 saved" leaves behind:
    with metrics.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"iter": 15, "train_loss": 9.0, "val_loss": 9.0}) + "\n")
    train(
        make_config("train.max_iters=20", "train.lr_decay_iters=20", "train.eval_interval=5"),
        workdir,
    )
    iters = [json.loads(line)["iter"] for line in metrics.read_text().splitlines()]
    assert iters == [0, 10, 15, 20]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert rows[2]["val_loss"] != 9.0
