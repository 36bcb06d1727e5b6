"""Early stopping: the `EarlyStopping` rule, and how the loop ends an early-stopped run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.train.callbacks import (
    Callback,
    CheckpointEvent,
    EarlyStopping,
    EvalEvent,
    RunStart,
    TrainControl,
)
from ml_playground.train.checkpoint import open_checkpoint
from ml_playground.train.loop import train

MakeConfig = Callable[..., ExperimentConfig]


def started(callback: Callback) -> TrainControl:
    """Deliver `on_train_start` as the loop does; return the control the callback was given."""
    control = TrainControl()
    callback.on_train_start(
        RunStart(Path("run"), 0, 100, 1000, "cpu", "float32", {}, control, False)
    )
    return control


def evaluation(iteration: int, val: float, best_val: float, best_iter: int) -> EvalEvent:
    return EvalEvent(iteration, val, val, 1e-3, 0.0, best_val, iteration == best_iter, best_iter)


# --- the rule ------------------------------------------------------------------------------------
def test_stops_after_patience_evaluations_without_improvement() -> None:
    stopper = EarlyStopping(patience=2, eval_interval=10)
    control = started(stopper)
    stopper.on_eval(evaluation(0, 4.0, float("inf"), -1))
    stopper.on_eval(evaluation(10, 3.0, 3.0, 10))
    stopper.on_eval(evaluation(20, 3.1, 3.0, 10))  # one evaluation without improvement
    assert control.stop_reason is None
    stopper.on_eval(evaluation(30, 3.2, 3.0, 10))  # two
    assert control.stop_reason is not None
    assert control.stop_reason == (
        "early stop: val loss has not improved for 2 evaluations (best 3.0000 at iter 10)"
    )


def test_an_improvement_resets_the_count() -> None:
    stopper = EarlyStopping(patience=2, eval_interval=10)
    control = started(stopper)
    stopper.on_eval(evaluation(10, 3.0, 3.0, 10))
    stopper.on_eval(evaluation(20, 3.1, 3.0, 10))
    stopper.on_eval(evaluation(30, 2.9, 2.9, 30))  # new best
    stopper.on_eval(evaluation(40, 3.0, 2.9, 30))
    assert control.stop_reason is None
    stopper.on_eval(evaluation(50, 3.0, 2.9, 30))
    assert control.stop_reason is not None
    assert "best 2.9000 at iter 30" in control.stop_reason


@pytest.mark.parametrize("patience", [1, 3])
def test_the_evaluation_at_iter_zero_never_stops(patience: int) -> None:
    stopper = EarlyStopping(patience=patience, eval_interval=5)
    control = started(stopper)
    stopper.on_eval(evaluation(0, 4.0, float("inf"), -1))
    assert control.stop_reason is None


def test_a_resumed_run_counts_from_its_best_iteration() -> None:
    # No counter of its own: a fresh callback (as after resume) decides from best_iter alone.
    stopper = EarlyStopping(patience=3, eval_interval=10)
    control = started(stopper)
    stopper.on_eval(evaluation(40, 3.5, 3.0, 20))  # two evaluations since the best at 20
    assert control.stop_reason is None
    stopper.on_eval(evaluation(50, 3.5, 3.0, 20))
    assert control.stop_reason is not None


# --- in the loop ---------------------------------------------------------------------------------
def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line) for line in (run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    ]


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return data


class StopAt(Callback):
    """A user callback that asks the loop to stop from `on_eval`, through `RunStart.control`."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.control: TrainControl | None = None
        self.checkpoints: list[CheckpointEvent] = []
        self.end: dict[str, Any] | None = None

    def on_train_start(self, event: RunStart) -> None:
        self.control = event.control

    def on_eval(self, event: EvalEvent) -> None:
        if event.iter == self.at and self.control is not None:
            self.control.request_stop(f"stopped by the test at iter {event.iter}")

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        self.checkpoints.append(event)

    def on_train_end(self, summary: dict[str, Any]) -> None:
        self.end = summary


def test_a_callback_can_stop_the_run(make_config: MakeConfig, workdir: Path) -> None:
    config = make_config(
        "train.max_iters=40", "train.eval_interval=5", "train.checkpoint_interval=20"
    )
    prepare_dataset(config.data, workdir, config.name)
    stop = StopAt(15)
    result = train(config, workdir, callbacks=[stop])

    assert result.summary["iters"] == 15
    assert result.summary["status"] == "early_stopped"
    assert result.summary["stop_reason"] == "stopped by the test at iter 15"
    assert read_json(result.run_dir / "summary.json") == result.summary
    assert stop.end == result.summary
    assert [row["iter"] for row in read_metrics(result.run_dir)] == [0, 5, 10, 15]
    # `last` is saved at the stop even though 15 is not a checkpoint_interval multiple.
    last = result.run_dir / "checkpoints" / "last"
    assert open_checkpoint(last).state["iter"] == 15
    assert [(e.kind, e.iter) for e in stop.checkpoints if e.kind == "last"] == [("last", 15)]


def test_early_stop_patience_ends_a_run_that_stops_improving(
    make_config: MakeConfig, workdir: Path
) -> None:
    # A learning rate this small leaves the model as initialised, so the val loss only moves
    # with the evaluation batches (drawn afresh at every eval): it cannot improve ten times in
    # a row, and patience 1 stops at the first evaluation that is no new best.
    config = make_config(
        "train.max_iters=20",
        "train.eval_interval=2",
        "train.learning_rate=1e-9",
        "train.min_lr=0.0",
        "train.early_stop_patience=1",
    )
    prepare_dataset(config.data, workdir, config.name)
    result = train(config, workdir)

    rows = read_metrics(result.run_dir)
    best, best_iter, stop_iter = float("inf"), -1, None
    for row in rows[1:]:  # iter 0 is not a candidate for best
        if row["val_loss"] < best:
            best, best_iter = row["val_loss"], row["iter"]
        else:
            stop_iter = row["iter"]
            break
    assert stop_iter is not None, rows
    assert stop_iter < 20
    assert rows[-1]["iter"] == stop_iter  # no evaluation after the stop

    summary = result.summary
    assert summary["status"] == "early_stopped"
    assert summary["iters"] == stop_iter
    assert summary["best_iter"] == best_iter
    assert summary["stop_reason"] == (
        f"early stop: val loss has not improved for 1 evaluations "
        f"(best {best:.4f} at iter {best_iter})"
    )
    assert read_json(result.run_dir / "summary.json") == summary
    assert open_checkpoint(result.run_dir / "checkpoints" / "last").state["iter"] == stop_iter
    assert open_checkpoint(result.run_dir / "checkpoints" / "best").state["iter"] == best_iter
