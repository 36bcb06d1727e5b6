"""Samples during training: `train.sample_interval` writes samples/ and feeds the trackers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.tracking.base import InMemoryTracker
from ml_playground.train.callbacks import TrackerCallback
from ml_playground.train.loop import train

MakeConfig = Callable[..., ExperimentConfig]
PROMPT = "KING."  # [sample] prompt of the tiny experiment
MAX_NEW_TOKENS = 20  # [sample] max_new_tokens of the tiny experiment (one char per token)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line) for line in (run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    ]


def test_samples_are_written_and_tracked_without_perturbing_training(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    sampled_dir, plain_dir = tmp_path / "sampled", tmp_path / "plain"
    sampled_dir.mkdir()
    plain_dir.mkdir()

    config = make_config("train.max_iters=20", "train.sample_interval=10")
    prepare_dataset(config.data, sampled_dir, config.name)
    tracker = InMemoryTracker()
    sampled = train(config, sampled_dir, callbacks=[TrackerCallback(tracker)])

    samples = sampled.run_dir / "samples"
    assert sorted(p.name for p in samples.glob("*.txt")) == ["iter_0000010.txt", "iter_0000020.txt"]
    texts = {step: (samples / f"iter_{step:07d}.txt").read_text("utf-8") for step in (10, 20)}
    for text in texts.values():
        assert text.startswith(PROMPT)
        assert len(text) == len(PROMPT) + MAX_NEW_TOKENS
    # The tracker got the same text under the `samples` tag, at the same steps.
    assert tracker.texts == [(10, "samples", texts[10]), (20, "samples", texts[20])]
    assert tracker.status == "FINISHED"

    plain_config = make_config("train.max_iters=20", "train.sample_interval=0")
    prepare_dataset(plain_config.data, plain_dir, plain_config.name)
    plain = train(plain_config, plain_dir)
    assert not (plain.run_dir / "samples").exists()

    # Sampling draws from its own generator: the training run is exactly the same.
    def losses(run_dir: Path) -> list[tuple[int, float, float]]:
        return [(r["iter"], r["train_loss"], r["val_loss"]) for r in read_metrics(run_dir)]

    assert losses(sampled.run_dir) == losses(plain.run_dir)
    want = load_file(str(plain.run_dir / "checkpoints" / "last" / "model.safetensors"))
    have = load_file(str(sampled.run_dir / "checkpoints" / "last" / "model.safetensors"))
    assert want.keys() == have.keys()
    for key in want:
        assert torch.equal(want[key], have[key]), key
    state = json.loads((sampled.run_dir / "checkpoints/last/state.json").read_text("utf-8"))
    plain_state = json.loads((plain.run_dir / "checkpoints/last/state.json").read_text("utf-8"))
    assert state["rng"] == plain_state["rng"]
    assert state["data_cursor"] == plain_state["data_cursor"]


def test_samples_differ_as_training_moves_on(make_config: MakeConfig, workdir: Path) -> None:
    # Each sample is seeded by the step, so two steps give two different draws.
    config = make_config("train.max_iters=4", "train.sample_interval=2", "train.eval_interval=4")
    prepare_dataset(config.data, workdir, config.name)
    tracker = InMemoryTracker()
    train(config, workdir, callbacks=[TrackerCallback(tracker)])
    assert [step for step, _, _ in tracker.texts] == [2, 4]
    assert tracker.texts[0][2] != tracker.texts[1][2]
