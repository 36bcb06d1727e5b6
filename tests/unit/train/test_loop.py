"""The training loop through its public API: `train(config, workdir, resume=..., callbacks=...)`."""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.errors import CheckpointError, DataError
from ml_playground.train.callbacks import Callback, LogEvent
from ml_playground.train.loop import TrainingInterrupted, train

MakeConfig = Callable[..., ExperimentConfig]


def prepared(make_config: MakeConfig, workdir: Path, *overrides: str) -> ExperimentConfig:
    """The tiny config with `overrides`, its dataset prepared in `workdir`."""
    config = make_config(*overrides)
    prepare_dataset(config.data, workdir, config.name)
    return config


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines]


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return data


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class InterruptAt(Callback):
    """Sends this process SIGINT from the `on_log` of iteration `at`, as Ctrl-C would."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.sent = False

    def on_log(self, event: LogEvent) -> None:
        if event.iter == self.at and not self.sent:
            self.sent = True
            signal.raise_signal(signal.SIGINT)


# Fixed decay horizon: both halves of a resumed run must follow the straight run's schedule.
SCHEDULE = ("train.lr_decay_iters=20", "train.grad_accum_steps=2")


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_resume_reproduces_the_uninterrupted_run(
    make_config: MakeConfig, tmp_path: Path, dropout: float
) -> None:
    overrides = (*SCHEDULE, f"model.dropout={dropout}")
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    straight_dir.mkdir()
    resumed_dir.mkdir()

    straight_config = prepared(make_config, straight_dir, *overrides, "train.max_iters=20")
    straight = train(straight_config, straight_dir)

    half_config = prepared(make_config, resumed_dir, *overrides, "train.max_iters=10")
    half = train(half_config, resumed_dir)
    assert half.summary["iters"] == 10
    resumed = train(make_config(*overrides, "train.max_iters=20"), resumed_dir)
    assert resumed.summary["iters"] == 20

    expected = read_metrics(straight.run_dir)
    got = read_metrics(resumed.run_dir)
    assert [row["iter"] for row in expected] == [0, 10, 20]
    assert [row["iter"] for row in got] == [0, 10, 20]
    for want, have in zip(expected, got, strict=True):
        assert have["train_loss"] == want["train_loss"], want["iter"]
        assert have["val_loss"] == want["val_loss"], want["iter"]
        assert have["lr"] == want["lr"], want["iter"]
    assert resumed.summary["best_val_loss"] == straight.summary["best_val_loss"]
    assert resumed.summary["best_iter"] == straight.summary["best_iter"]
    assert_same_weights(
        weights(straight.run_dir / "checkpoints" / "last"),
        weights(resumed.run_dir / "checkpoints" / "last"),
    )


def test_resume_continues_from_the_last_checkpoint(make_config: MakeConfig, workdir: Path) -> None:
    config = prepared(make_config, workdir, "train.max_iters=10")
    first = train(config, workdir)
    last = first.run_dir / "checkpoints" / "last"
    assert read_json(last / "state.json")["iter"] == 10

    second = train(make_config("train.max_iters=20"), workdir)
    assert second.run_dir == first.run_dir
    assert [row["iter"] for row in read_metrics(second.run_dir)] == [0, 10, 20]
    assert read_json(last / "state.json")["iter"] == 20


def test_no_resume_starts_over(make_config: MakeConfig, workdir: Path) -> None:
    config = prepared(make_config, workdir, "train.max_iters=20")
    first = train(config, workdir)
    assert [row["iter"] for row in read_metrics(first.run_dir)] == [0, 10, 20]

    again = train(make_config("train.max_iters=10"), workdir, resume=False)
    assert again.run_dir == first.run_dir
    # Only the new run's evaluations: the old metrics are gone, not appended to.
    assert [row["iter"] for row in read_metrics(again.run_dir)] == [0, 10]
    assert again.summary["iters"] == 10
    assert again.summary["best_iter"] <= 10
    assert read_json(again.run_dir / "checkpoints" / "last" / "state.json")["iter"] == 10
    best_state = read_json(again.run_dir / "checkpoints" / "best" / "state.json")
    assert best_state["iter"] <= 10


def test_no_resume_matches_a_fresh_workdir(
    make_config: MakeConfig, workdir: Path, tmp_path: Path
) -> None:
    config = prepared(make_config, workdir, "train.max_iters=10")
    train(config, workdir)
    restarted = train(config, workdir, resume=False)

    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    fresh = train(prepared(make_config, fresh_dir, "train.max_iters=10"), fresh_dir)

    def losses(run_dir: Path) -> list[tuple[int, float, float]]:
        return [(r["iter"], r["train_loss"], r["val_loss"]) for r in read_metrics(run_dir)]

    assert losses(restarted.run_dir) == losses(fresh.run_dir)
    assert_same_weights(
        weights(restarted.run_dir / "checkpoints" / "last"),
        weights(fresh.run_dir / "checkpoints" / "last"),
    )


def test_resume_with_another_model_section_names_no_resume(
    make_config: MakeConfig, workdir: Path
) -> None:
    config = prepared(make_config, workdir, "train.max_iters=5")
    first = train(config, workdir)
    before = (first.run_dir / "metrics.jsonl").read_text("utf-8")

    with pytest.raises(CheckpointError, match=r"different \[model\].*--no-resume"):
        train(make_config("train.max_iters=10", "model.n_embd=48"), workdir)
    # The refused resume left the run as it was.
    assert (first.run_dir / "metrics.jsonl").read_text("utf-8") == before
    assert read_json(first.run_dir / "checkpoints" / "last" / "state.json")["iter"] == 5

    # Starting over with the new model is what the message offers, and it works.
    over = train(make_config("train.max_iters=5", "model.n_embd=48"), workdir, resume=False)
    assert over.summary["iters"] == 5


def test_best_checkpoint_holds_the_lowest_val_loss(make_config: MakeConfig, workdir: Path) -> None:
    config = prepared(make_config, workdir, "train.max_iters=20", "train.eval_interval=5")
    result = train(config, workdir)
    rows = read_metrics(result.run_dir)
    assert [row["iter"] for row in rows] == [0, 5, 10, 15, 20]
    trained = [row for row in rows if row["iter"] > 0]
    lowest = min(trained, key=lambda row: row["val_loss"])

    best_dir = result.run_dir / "checkpoints" / "best"
    state = read_json(best_dir / "state.json")
    summary = read_json(result.run_dir / "summary.json")
    assert state["best_val_loss"] == lowest["val_loss"]
    assert state["best_iter"] == lowest["iter"] == summary["best_iter"]
    assert state["iter"] == summary["best_iter"]
    assert summary["best_val_loss"] == lowest["val_loss"]

    best, last = weights(best_dir), weights(result.run_dir / "checkpoints" / "last")
    if summary["best_iter"] == summary["iters"]:
        assert_same_weights(best, last)
    else:
        assert not all(torch.equal(best[key], last[key]) for key in best)


def test_sigint_saves_last_and_the_run_resumes(
    make_config: MakeConfig, workdir: Path, tmp_path: Path
) -> None:
    config = prepared(make_config, workdir, "train.max_iters=20")
    handler_before = signal.getsignal(signal.SIGINT)
    interrupt = InterruptAt(5)
    with pytest.raises(TrainingInterrupted, match=r"interrupted at iter 5"):
        train(config, workdir, callbacks=[interrupt])
    assert interrupt.sent
    # The loop's handler is gone again: a later Ctrl-C behaves as usual.
    assert signal.getsignal(signal.SIGINT) is handler_before

    run_dir = workdir / "runs" / config.name / config.train.run_name
    assert read_json(run_dir / "checkpoints" / "last" / "state.json")["iter"] == 5
    assert not (run_dir / "summary.json").exists()

    resumed = train(config, workdir)
    assert resumed.summary["iters"] == 20
    assert [row["iter"] for row in read_metrics(run_dir)] == [0, 10, 20]
    assert read_json(run_dir / "checkpoints" / "last" / "state.json")["iter"] == 20

    # Interrupted + resumed is the same run as one that never stopped.
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    straight = train(prepared(make_config, straight_dir, "train.max_iters=20"), straight_dir)
    assert [row["val_loss"] for row in read_metrics(run_dir)] == [
        row["val_loss"] for row in read_metrics(straight.run_dir)
    ]
    assert_same_weights(
        weights(run_dir / "checkpoints" / "last"),
        weights(straight.run_dir / "checkpoints" / "last"),
    )


def test_metrics_and_summary_have_the_documented_keys(
    make_config: MakeConfig, workdir: Path
) -> None:
    config = prepared(make_config, workdir, "train.max_iters=20")
    result = train(config, workdir)
    rows = read_metrics(result.run_dir)
    assert [row["iter"] for row in rows] == [0, 10, 20]
    for row in rows:
        assert set(row) == {"iter", "train_loss", "val_loss", "lr", "tokens_per_s"}
        assert math.isfinite(row["train_loss"])
        assert math.isfinite(row["val_loss"])
        assert row["lr"] > 0
    assert rows[-1]["tokens_per_s"] > 0

    summary = read_json(result.run_dir / "summary.json")
    assert summary == result.summary
    assert {"best_val_loss", "best_iter", "iters", "wall_s", "tokens_per_s"} <= set(summary)
    assert summary["iters"] == 20
    assert summary["wall_s"] > 0
    assert summary["tokens_per_s"] > 0
    assert (result.run_dir / "config.toml").is_file()
    assert not (result.run_dir / "tb").exists()  # tracking.tensorboard=false in the tiny config


def test_tensorboard_scalars_use_the_documented_tags(
    make_config: MakeConfig, workdir: Path
) -> None:
    config = prepared(make_config, workdir, "train.max_iters=20", "tracking.tensorboard=true")
    result = train(config, workdir)
    rows = read_metrics(result.run_dir)

    events = EventAccumulator(str(result.run_dir / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/val", "lr", "throughput/tokens_per_s"} <= tags
    val = events.Scalars("loss/val")
    assert [event.step for event in val] == [row["iter"] for row in rows]
    for event, row in zip(val, rows, strict=True):
        assert event.value == pytest.approx(row["val_loss"], rel=1e-6)
    train_loss = events.Scalars("loss/train")
    assert [event.step for event in train_loss] == [0, 10, 20]
    assert all(event.value > 0 for event in events.Scalars("lr"))


def test_missing_dataset_says_which_command_prepares_it(
    make_config: MakeConfig, workdir: Path
) -> None:
    config = make_config("train.max_iters=5")
    with pytest.raises(DataError, match=r"ml-playground prepare tiny"):
        train(config, workdir)
    assert not (workdir / "runs").exists()
