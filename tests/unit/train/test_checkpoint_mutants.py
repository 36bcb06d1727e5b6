"""Checkpoint behaviour that mutation testing found unpinned (see docs/testing.md).

`test_checkpoint.py` covers the round trip and crash safety; these tests add the EMA weights,
the refusal to unpickle code from `optimizer.pt`, LoRA (adapter-only) checkpoints, saving
into a folder that does not exist yet, text files in UTF-8 whatever the locale, and resuming
a GPU run's optimizer on a CPU.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import ascii_locale
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


def test_a_config_with_umlauts_round_trips_through_a_checkpoint_whatever_the_locale(
    config: ExperimentConfig, tokenizer_dir: Path, tmp_path: Path
) -> None:
    # The German presets sample from prompts like this one; config.toml stores it.
    prompt = "Präsident Dr. Norbert Lammert: Ich eröffne die Sitzung."
    config = config.model_copy(
        update={"sample": config.sample.model_copy(update={"prompt": prompt})}
    )
    model = model_for(config, 0)
    with ascii_locale():
        directory = save(tmp_path / "last", config, tokenizer_dir, model)
        checkpoint = ckpt.open_checkpoint(directory)
    assert checkpoint.config.sample.prompt == prompt
    # UTF-8 on disk, so the checkpoint reads the same on a machine with another locale.
    assert prompt in (directory / "config.toml").read_bytes().decode("utf-8")


def test_optimizer_state_saved_on_a_gpu_resumes_on_a_cpu(
    config: ExperimentConfig,
    tokenizer_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible, so this is not a CPU-only machine")
    model = model_for(config, 0)
    optimizer = build_optimizer(model, config.train, torch.device("cpu"))
    tokens = torch.zeros(1, 4, dtype=torch.long)
    _, loss = model(tokens, targets=tokens)
    assert loss is not None
    loss.backward()
    optimizer.step()  # now it holds moments to resume
    # torch.save records each tensor's device by `location_tag`; on a GPU it says "cuda:0".
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda _storage: "cuda:0")
        directory = save(tmp_path / "last", config, tokenizer_dir, model, optimizer=optimizer)
    resumed = build_optimizer(model, config.train, torch.device("cpu"))
    ckpt.load_optimizer(ckpt.open_checkpoint(directory), resumed)
    expected, loaded = optimizer.state_dict()["state"], resumed.state_dict()["state"]
    assert loaded.keys() == expected.keys()
    for index, moments in expected.items():
        for key, value in moments.items():
            assert loaded[index][key].device.type == "cpu"
            assert torch.equal(loaded[index][key], value), (index, key)


def test_optimizer_code_is_refused_even_where_the_environment_turns_torchs_guard_off(
    config: ExperimentConfig,
    tokenizer_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Some people set this to load old pickles; it only changes torch.load's *default*.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    model = model_for(config, 0)
    optimizer = build_optimizer(model, config.train, torch.device("cpu"))
    directory = save(tmp_path / "last", config, tokenizer_dir, model, optimizer=optimizer)
    tampered = optimizer.state_dict()
    tampered["payload"] = NotATensor()
    torch.save(tampered, directory / "optimizer.pt")
    with pytest.raises(pickle.UnpicklingError):
        ckpt.load_optimizer(ckpt.open_checkpoint(directory), optimizer)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_cuda_generator_resumes_where_it_was() -> None:
    torch.cuda.manual_seed_all(0)
    state = json.loads(json.dumps(ckpt.capture_rng_state()))  # as it comes back from state.json
    assert len(state["cuda"]) == torch.cuda.device_count()
    expected = torch.rand(8, device="cuda")
    torch.cuda.manual_seed_all(1)
    ckpt.restore_rng_state(state)
    assert torch.equal(torch.rand(8, device="cuda"), expected)
