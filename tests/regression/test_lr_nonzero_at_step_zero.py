"""Regression: the first optimizer step must learn (lr > 0), whatever the warmup length.

A warmup of `lr * step / warmup` gives lr = 0 at step 0, a wasted step; and a schedule whose
decay ends where warmup ends must not divide by a zero-length cosine phase.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ml_playground.config.schema import ExperimentConfig, TrainConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.train.loop import train
from ml_playground.train.optim import learning_rate_at


@pytest.mark.parametrize("warmup", [0, 1, 100])
@pytest.mark.parametrize("min_lr", [0.0, 1e-4])
def test_lr_nonzero_at_step_zero(warmup: int, min_lr: float) -> None:
    config = TrainConfig(max_iters=1000, warmup_iters=warmup, learning_rate=1e-3, min_lr=min_lr)
    assert learning_rate_at(0, config) > 0.0


@pytest.mark.parametrize("warmup", [1, 10, 100])
def test_warmup_equal_to_decay_end_does_not_divide_by_zero(warmup: int) -> None:
    config = TrainConfig(
        max_iters=2 * warmup, warmup_iters=warmup, lr_decay_iters=warmup, min_lr=1e-5
    )
    rates = [learning_rate_at(step, config) for step in range(2 * warmup + 2)]
    assert all(rate > 0.0 for rate in rates)
    assert rates[warmup:] == [config.min_lr] * (warmup + 2)


def test_warmup_equal_to_max_iters_does_not_divide_by_zero() -> None:
    config = TrainConfig(max_iters=10, warmup_iters=10, min_lr=0.0)
    rates = [learning_rate_at(step, config) for step in range(12)]
    assert all(rate > 0.0 for rate in rates[:10])


def test_first_logged_lr_is_nonzero(
    make_config: Callable[..., ExperimentConfig], workdir: Path
) -> None:
    config = make_config("train.max_iters=2", "train.warmup_iters=100", "train.min_lr=0.0")
    prepare_dataset(config.data, workdir, config.name)
    result = train(config, workdir)
    rows = [
        json.loads(line)
        for line in (result.run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    ]
    assert rows[0]["iter"] == 0
    assert rows[0]["lr"] > 0.0
