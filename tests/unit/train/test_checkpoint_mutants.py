"""Checkpoint behaviour that mutation testing found unpinned (see docs/testing.md).

`test_checkpoint.py` covers the round trip and crash safety; these tests add the EMA weights,
the refusal to unpickle code from `optimizer.pt`, LoRA (adapter-only) checkpoints, and saving
into a folder that does not exist yet.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.config.loading import config_to_toml
from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.tokenizers import CharTokenizer, load_tokenizer
from ml_playground.errors import CheckpointError
from ml_playground.model.gpt import GPT
from ml_playground.train import checkpoint as ckpt
from ml_playground.train.optim import build_optimizer


class NotATensor:
    """Anything pickle can rebuild by running code: `weights_only=True` must refuse it."""


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    path = tmp_path / "tokenizer"
    CharTokenizer.train(["KING.\nGood night, my lord!"]).save(path)
    return path


@pytest.fixture
def config(make_config: Callable[..., ExperimentConfig], tokenizer_dir: Path) -> ExperimentConfig:
    base = make_config()
    vocab = load_tokenizer(tokenizer_dir).vocab_size
    return base.model_copy(update={"model": base.model.model_copy(update={"vocab_size": vocab})})


def model_for(config: ExperimentConfig, seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(config.model)


def save(
    directory: Path,
    config: ExperimentConfig,
    tokenizer_dir: Path,
    model: GPT,
    **options: Any,
) -> Path:
    return ckpt.save_checkpoint(
        directory,
        model=model,
        optimizer=options.pop("optimizer", None),
        state={"iter": options.pop("iteration", 1), "best_val_loss": 2.0, "best_iter": 1},
        config_toml=config_to_toml(config),
        tokenizer_dir=tokenizer_dir,
        **options,
    )


def test_ema_weights_round_trip_and_load_into_the_model(
    config: ExperimentConfig, tokenizer_dir: Path, tmp_path: Path
) -> None:
    model = model_for(config, seed=0)
    ema = {name: p.detach() + 1.0 for name, p in model.named_parameters()}
    directory = save(tmp_path / "last", config, tokenizer_dir, model, ema=ema)
    checkpoint = ckpt.open_checkpoint(directory)

    state = ckpt.load_ema_state(checkpoint)
    assert set(state) == set(ema)
    assert all(torch.equal(state[name], ema[name]) for name in ema)

    other = model_for(config, seed=1)
    ckpt.load_ema_weights(checkpoint, other)
    for name, param in other.named_parameters():
        assert torch.equal(param, ema[name]), name


def test_a_checkpoint_without_ema_says_how_to_get_one(
    config: ExperimentConfig, tokenizer_dir: Path, tmp_path: Path
) -> None:
    directory = save(tmp_path / "last", config, tokenizer_dir, model_for(config, 0))
    with pytest.raises(CheckpointError) as info:
        ckpt.load_ema_weights(ckpt.open_checkpoint(directory), model_for(config, 0))
    assert str(info.value) == (
        f"{directory} holds no EMA weights; train with train.ema_decay=0.999 (for example) or "
        f"sample with --weights model"
    )


def test_ema_weights_of_another_model_do_not_load(
    config: ExperimentConfig, tokenizer_dir: Path, tmp_path: Path
) -> None:
    model = model_for(config, 0)
    ema = {name: p.detach().clone() for name, p in model.named_parameters()}
    ema.pop(next(iter(ema)))
    directory = save(tmp_path / "last", config, tokenizer_dir, model, ema=ema)
    target = model_for(config, 1)
    before = {name: p.detach().clone() for name, p in target.named_parameters()}
    with pytest.raises(CheckpointError) as info:
        ckpt.load_ema_weights(ckpt.open_checkpoint(directory), target)
    assert str(info.value) == f"{directory / 'ema.safetensors'} does not fit this model"
    assert all(torch.equal(p, before[name]) for name, p in target.named_parameters())


def test_optimizer_state_that_needs_code_to_unpickle_is_refused(
    config: ExperimentConfig, tokenizer_dir: Path, tmp_path: Path
) -> None:
    model = model_for(config, 0)
    optimizer = build_optimizer(model, config.train, torch.device("cpu"))
    directory = save(tmp_path / "last", config, tokenizer_dir, model, optimizer=optimizer)
    tampered = optimizer.state_dict()
    tampered["payload"] = NotATensor()
    torch.save(tampered, directory / "optimizer.pt")
    with pytest.raises(pickle.UnpicklingError):
        ckpt.load_optimizer(ckpt.open_checkpoint(directory), optimizer)


def test_a_checkpoint_without_optimizer_cannot_be_resumed(
    config: ExperimentConfig, tokenizer_dir: Path, tmp_path: Path
) -> None:
    model = model_for(config, 0)
    directory = save(tmp_path / "last", config, tokenizer_dir, model)
    optimizer = build_optimizer(model, config.train, torch.device("cpu"))
    with pytest.raises(CheckpointError) as info:
        ckpt.load_optimizer(ckpt.open_checkpoint(directory), optimizer)
    assert str(info.value) == f"{directory} holds no optimizer state; it cannot be resumed"


def write_adapter(folder: Path) -> None:
    """What a LoRA fine-tune writes in place of model.safetensors (see `write_weights`)."""
    (folder / ckpt.ADAPTER_FILE).write_bytes(b"adapter")
    (folder / "adapter_config.json").write_text("{}", "utf-8")


def test_a_lora_checkpoint_opens_without_model_safetensors(
    config: ExperimentConfig, tokenizer_dir: Path, tmp_path: Path
) -> None:
    directory = save(
        tmp_path / "last", config, tokenizer_dir, model_for(config, 0), write_weights=write_adapter
    )
    assert not (directory / "model.safetensors").exists()
    checkpoint = ckpt.open_checkpoint(directory)
    assert checkpoint.state["iter"] == 1
    assert checkpoint.config.model == config.model


def test_a_checkpoint_with_both_weight_files_opens(
    config: ExperimentConfig, tokenizer_dir: Path, tmp_path: Path
) -> None:
    directory = save(tmp_path / "last", config, tokenizer_dir, model_for(config, 0))
    write_adapter(directory)
    assert ckpt.open_checkpoint(directory).state["iter"] == 1


def test_an_incomplete_checkpoint_lists_everything_missing(
    config: ExperimentConfig, tokenizer_dir: Path, tmp_path: Path
) -> None:
    directory = save(tmp_path / "last", config, tokenizer_dir, model_for(config, 0))
    (directory / "model.safetensors").unlink()
    (directory / "state.json").unlink()
    with pytest.raises(CheckpointError) as info:
        ckpt.open_checkpoint(directory)
    assert str(info.value) == (
        f"checkpoint {directory} is incomplete: missing model.safetensors, state.json"
    )


def test_save_creates_every_missing_parent(
    config: ExperimentConfig, tokenizer_dir: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "runs" / "exp" / "main" / "checkpoints" / "last"
    save(directory, config, tokenizer_dir, model_for(config, 0))
    assert ckpt.open_checkpoint(directory).state["iter"] == 1
