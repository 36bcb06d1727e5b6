"""Regression: every finished run has a `best` checkpoint, and it holds the lowest val loss.

nanoGPT forks lose `best` in a few classic ways: saving it only when `iter > 0`, so a run
shorter than `eval_interval` never writes one; never evaluating the final step; or resuming
with the best loss reset (to 0, nothing is ever better; to inf, a worse checkpoint replaces
the real best). `sample` then quietly falls back to `last`, so the bug hides: these tests look
at `checkpoints/best` itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.generate.service import load_for_inference, sample_texts
from ml_playground.train.loop import train


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines]


def best_state(run_dir: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(
        (run_dir / "checkpoints" / "best" / "state.json").read_text("utf-8")
    )
    return state


def test_best_checkpoint_is_found_when_the_run_is_shorter_than_eval_interval(
    make_config: Callable[..., ExperimentConfig], workdir: Path
) -> None:
    config = make_config("train.max_iters=7", "train.eval_interval=100")
    prepare_dataset(config.data, workdir, config.name)
    result = train(config, workdir)

    rows = metrics(result.run_dir)
    assert [row["iter"] for row in rows] == [0, 7]  # the final step is evaluated
    lowest = min(rows, key=lambda row: row["val_loss"])
    state = best_state(result.run_dir)
    assert state["iter"] == lowest["iter"] == result.summary["best_iter"]
    assert state["best_val_loss"] == lowest["val_loss"]

    loaded = load_for_inference(result.run_dir / "checkpoints" / "best", "cpu")
    (text,) = sample_texts(loaded, config.sample.model_copy(update={"max_new_tokens": 5}))
    assert len(text) > 0


def test_a_resumed_run_that_improves_moves_best_forward(
    make_config: Callable[..., ExperimentConfig], workdir: Path
) -> None:
    """Catches a best loss restored as 0 (or not restored at all): nothing would beat it."""
    config = make_config("train.max_iters=10", "train.eval_interval=5")
    prepare_dataset(config.data, workdir, config.name)
    train(config, workdir)

    second = train(make_config("train.max_iters=30", "train.eval_interval=5"), workdir)
    rows = metrics(second.run_dir)
    assert [row["iter"] for row in rows] == [0, 5, 10, 15, 20, 25, 30]
    lowest = min(rows, key=lambda row: row["val_loss"])
    assert lowest["iter"] > 10  # precondition: the resumed session did improve
    state = best_state(second.run_dir)
    assert state["iter"] == lowest["iter"] == second.summary["best_iter"]
    assert state["best_val_loss"] == lowest["val_loss"] == second.summary["best_val_loss"]


def test_a_resumed_run_that_gets_worse_keeps_the_earlier_best(
    make_config: Callable[..., ExperimentConfig], workdir: Path
) -> None:
    """Catches a best loss reset to inf on resume: the first worse evaluation would replace it."""
    config = make_config("train.max_iters=10", "train.eval_interval=5")
    prepare_dataset(config.data, workdir, config.name)
    first = train(config, workdir)
    before = best_state(first.run_dir)

    # A learning rate far too high makes the resumed session's losses worse than before.
    worse = make_config(
        "train.max_iters=20",
        "train.eval_interval=5",
        "train.learning_rate=3.0",
        "train.grad_clip=0",
    )
    second = train(worse, workdir)
    rows = metrics(second.run_dir)
    assert [row["iter"] for row in rows] == [0, 5, 10, 15, 20]
    assert all(row["val_loss"] > before["best_val_loss"] for row in rows if row["iter"] > 10)
    state = best_state(second.run_dir)
    assert (state["iter"], state["best_val_loss"]) == (before["iter"], before["best_val_loss"])
    assert second.summary["best_iter"] == before["iter"]
