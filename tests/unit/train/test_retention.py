"""Checkpoint retention: `train.keep_last` and `train.keep_best` keep `<kind>-<iter>` copies."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.config.loading import config_to_toml
from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.data.tokenizers import CharTokenizer, load_tokenizer
from ml_playground.model.gpt import GPT
from ml_playground.train import checkpoint as ckpt
from ml_playground.train.loop import train

MakeConfig = Callable[..., ExperimentConfig]


def prepared(make_config: MakeConfig, workdir: Path, *overrides: str) -> ExperimentConfig:
    config = make_config(*overrides)
    prepare_dataset(config.data, workdir, config.name)
    return config


def iter_of(directory: Path) -> int:
    return int(json.loads((directory / "state.json").read_text("utf-8"))["iter"])


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line) for line in (run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    ]


def assert_loadable(directory: Path, expected_iter: int) -> None:
    checkpoint = ckpt.open_checkpoint(directory)
    assert checkpoint.state["iter"] == expected_iter
    model = GPT(checkpoint.config.model)
    ckpt.load_weights(checkpoint, model)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_keep_last_and_keep_best_keep_the_most_recent_copies(
    make_config: MakeConfig, workdir: Path
) -> None:
    config = prepared(
        make_config,
        workdir,
        "train.max_iters=10",
        "train.checkpoint_interval=2",
        "train.eval_interval=2",
        "train.keep_last=3",
        "train.keep_best=2",
    )
    result = train(config, workdir)
    checkpoints = result.run_dir / "checkpoints"

    # `last` was saved at 2, 4, 6, 8, 10: 10 is `last`, 8 and 6 survive, 4 and 2 are pruned.
    assert iter_of(checkpoints / "last") == 10
    assert sorted(p.name for p in checkpoints.glob("last-*")) == ["last-0000006", "last-0000008"]
    for name, expected in (("last-0000006", 6), ("last-0000008", 8)):
        assert_loadable(checkpoints / name, expected)
        # A history copy is a full, resumable checkpoint (optimizer state included).
        assert (checkpoints / name / "optimizer.pt").is_file()
    assert_loadable(checkpoints / "last", 10)

    # `best` was saved at every eval that improved on the best so far; keep_best=2 keeps one
    # older copy, the previous improvement.
    improved, best = [], float("inf")
    for row in read_metrics(result.run_dir):
        if row["iter"] > 0 and row["val_loss"] < best:
            improved.append(row["iter"])
            best = row["val_loss"]
    assert len(improved) >= 2, improved  # the tiny model improves early on
    assert iter_of(checkpoints / "best") == improved[-1] == result.summary["best_iter"]
    history = sorted(p.name for p in checkpoints.glob("best-*"))
    assert history == [f"best-{improved[-2]:07d}"]
    assert_loadable(checkpoints / history[0], improved[-2])
    assert_loadable(checkpoints / "best", improved[-1])

    # Nothing half-written is left beside them.
    assert not [p.name for p in checkpoints.iterdir() if p.name.startswith(".")]


def test_default_keeps_no_history(make_config: MakeConfig, workdir: Path) -> None:
    config = prepared(make_config, workdir, "train.max_iters=6", "train.checkpoint_interval=2")
    assert config.train.keep_last == config.train.keep_best == 1
    result = train(config, workdir)
    checkpoints = result.run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best", "last"]
    assert_loadable(checkpoints / "last", 6)


# --- save_checkpoint directly --------------------------------------------------------------------
@pytest.fixture
def config_and_tokenizer(make_config: MakeConfig, tmp_path: Path) -> tuple[ExperimentConfig, Path]:
    tokenizer_dir = tmp_path / "tokenizer"
    CharTokenizer.train(["KING.\nGood night, my lord!"]).save(tokenizer_dir)
    base = make_config()
    vocab = load_tokenizer(tokenizer_dir).vocab_size
    model = base.model.model_copy(update={"vocab_size": vocab})
    return base.model_copy(update={"model": model}), tokenizer_dir


def save_at(
    directory: Path, config: ExperimentConfig, tokenizer_dir: Path, iteration: int, keep: int
) -> None:
    torch.manual_seed(iteration)
    ckpt.save_checkpoint(
        directory,
        model=GPT(config.model),
        optimizer=None,
        state={"iter": iteration},
        config_toml=config_to_toml(config),
        tokenizer_dir=tokenizer_dir,
        keep=keep,
    )


def test_the_checkpoint_just_written_is_never_pruned(
    config_and_tokenizer: tuple[ExperimentConfig, Path], tmp_path: Path
) -> None:
    config, tokenizer_dir = config_and_tokenizer
    last = tmp_path / "checkpoints" / "last"
    for iteration in (1, 2, 3, 4):
        save_at(last, config, tokenizer_dir, iteration, keep=2)
        assert iter_of(last) == iteration
    assert [p.name for p in ckpt.history_dirs(last)] == ["last-0000003"]

    # Lowering keep prunes every older copy, but never the one just written.
    save_at(last, config, tokenizer_dir, 5, keep=1)
    assert ckpt.history_dirs(last) == []
    assert iter_of(last) == 5
    assert_loadable(last, 5)


def test_saving_the_same_iteration_again_makes_no_history_copy(
    config_and_tokenizer: tuple[ExperimentConfig, Path], tmp_path: Path
) -> None:
    config, tokenizer_dir = config_and_tokenizer
    last = tmp_path / "checkpoints" / "last"
    save_at(last, config, tokenizer_dir, 7, keep=3)
    save_at(last, config, tokenizer_dir, 7, keep=3)  # e.g. a resumed run saving at its start
    assert ckpt.history_dirs(last) == []
    save_at(last, config, tokenizer_dir, 9, keep=3)
    assert [p.name for p in ckpt.history_dirs(last)] == ["last-0000007"]
    assert_loadable(tmp_path / "checkpoints" / "last-0000007", 7)
    assert_loadable(last, 9)
