"""Regression: every gradient-accumulation micro-batch must be a fresh draw from the loader.

Reusing one micro-batch k times makes `grad_accum_steps=k` a slower `grad_accum_steps=1`. With
distinct draws, k micro-batches of b sequences are the same step as one batch of k*b sequences:
the loader's generator yields the same offsets either way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.train.callbacks import Callback, LogEvent
from ml_playground.train.loop import train


class StepLosses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_log(self, event: LogEvent) -> None:
        self.losses.append(event.loss)


def one_step(
    make_config: Callable[..., ExperimentConfig], workdir: Path, batch: int, accum: int
) -> tuple[float, dict[str, torch.Tensor], str]:
    """Train one optimizer step; return its logged loss, the weights and the data cursor."""
    workdir.mkdir()
    config = make_config(
        "train.max_iters=1",
        "train.warmup_iters=0",
        "train.grad_clip=0.0",
        f"train.batch_size={batch}",
        f"train.grad_accum_steps={accum}",
    )
    prepare_dataset(config.data, workdir, config.name)
    losses = StepLosses()
    result = train(config, workdir, callbacks=[losses])
    assert len(losses.losses) == 1
    last = result.run_dir / "checkpoints" / "last"
    state = json.loads((last / "state.json").read_text("utf-8"))
    return losses.losses[0], load_file(str(last / "model.safetensors")), state["data_cursor"]


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum(float((a[key] - b[key]).norm()) for key in a)


def test_grad_accum_uses_distinct_batches(
    make_config: Callable[..., ExperimentConfig], tmp_path: Path
) -> None:
    accum_loss, accum_weights, accum_cursor = one_step(make_config, tmp_path / "a", 2, 2)
    big_loss, big_weights, big_cursor = one_step(make_config, tmp_path / "b", 4, 1)
    first_loss, first_weights, first_cursor = one_step(make_config, tmp_path / "c", 2, 1)

    # The loader was drawn from twice: its cursor is where one draw of 4 sequences leaves it.
    assert accum_cursor == big_cursor
    assert accum_cursor != first_cursor

    # The step's loss is the mean over all four sequences, not the first micro-batch twice.
    assert accum_loss == pytest.approx(big_loss, rel=1e-5)
    assert abs(accum_loss - first_loss) > 100 * abs(accum_loss - big_loss)

    # And so is the update (equal up to float rounding of the summed gradients).
    assert distance(accum_weights, big_weights) < 0.01 * distance(accum_weights, first_weights)
