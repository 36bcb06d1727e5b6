from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

from ml_playground.config.loading import config_to_toml
from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.tokenizers import CharTokenizer, load_tokenizer
from ml_playground.errors import CheckpointError, MLPlaygroundError
from ml_playground.fsutil import recover_dir, replace_dir
from ml_playground.model.gpt import GPT
from ml_playground.train import checkpoint as ckpt
from ml_playground.train.optim import build_optimizer

CPU = torch.device("cpu")


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    path = tmp_path / "tokenizer"
    CharTokenizer.train(["KING.\nGood night, my lord!"]).save(path)
    return path


@pytest.fixture
def config(make_config: Callable[..., ExperimentConfig], tokenizer_dir: Path) -> ExperimentConfig:
    base = make_config("train.weight_decay=0.05")
    vocab = load_tokenizer(tokenizer_dir).vocab_size
    return base.model_copy(update={"model": base.model.model_copy(update={"vocab_size": vocab})})


def build_model(config: ExperimentConfig, seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(config.model)


def train_a_little(model: GPT, optimizer: torch.optim.Optimizer, steps: int = 2) -> None:
    """A few real steps, so the optimizer holds non-trivial moments."""
    generator = torch.Generator().manual_seed(0)
    vocab, block = model.vocab_size, model.block_size
    for _ in range(steps):
        idx = torch.randint(0, vocab, (2, block), generator=generator)
        _, loss = model(idx, targets=torch.roll(idx, -1, dims=1))
        assert loss is not None
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def save(
    directory: Path,
    config: ExperimentConfig,
    tokenizer_dir: Path,
    model: GPT,
    optimizer: torch.optim.Optimizer | None = None,
    iteration: int = 1,
) -> Path:
    state: dict[str, Any] = {
        "iter": iteration,
        "best_val_loss": 2.5,
        "best_iter": iteration,
        "rng": ckpt.capture_rng_state(),
    }
    return ckpt.save_checkpoint(
        directory,
        model=model,
        optimizer=optimizer,
        state=state,
        config_toml=config_to_toml(config),
        tokenizer_dir=tokenizer_dir,
    )


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def assert_weights_differ(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert not torch.equal(a.state_dict()["wte.weight"], b.state_dict()["wte.weight"])


def test_round_trip_restores_weights_bit_exactly(
    tmp_path: Path, config: ExperimentConfig, tokenizer_dir: Path
) -> None:
    model = build_model(config, seed=0)
    optimizer = build_optimizer(model, config.train, CPU)
    train_a_little(model, optimizer)
    path = save(tmp_path / "checkpoints" / "last", config, tokenizer_dir, model, optimizer)

    fresh = build_model(config, seed=1)
    assert_weights_differ(model, fresh)
    ckpt.load_weights(ckpt.open_checkpoint(path), fresh)
    assert_same_weights(model, fresh)
    # The tie survives loading: one tensor, not two copies.
    assert fresh.lm_head.weight is fresh.wte.weight


def test_round_trip_restores_optimizer_state(
    tmp_path: Path, config: ExperimentConfig, tokenizer_dir: Path
) -> None:
    model = build_model(config, seed=0)
    optimizer = build_optimizer(model, config.train, CPU)
    train_a_little(model, optimizer, steps=3)
    path = save(tmp_path / "last", config, tokenizer_dir, model, optimizer)

    fresh_model = build_model(config, seed=0)
    fresh = build_optimizer(fresh_model, config.train, CPU)
    checkpoint = ckpt.open_checkpoint(path)
    ckpt.load_weights(checkpoint, fresh_model)
    ckpt.load_optimizer(checkpoint, fresh)

    original, restored = optimizer.state_dict(), fresh.state_dict()
    assert original["param_groups"] == restored["param_groups"]
    assert original["state"].keys() == restored["state"].keys()
    assert len(restored["state"]) == len(list(model.parameters()))
    for index, moments in original["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, restored["state"][index][key]), (index, key)

    # Both continue identically: the next step gives the same weights.
    train_a_little(model, optimizer, steps=1)
    train_a_little(fresh_model, fresh, steps=1)
    assert_same_weights(model, fresh_model)


def test_checkpoint_directory_is_self_contained(
    tmp_path: Path, config: ExperimentConfig, tokenizer_dir: Path
) -> None:
    model = build_model(config, seed=0)
    optimizer = build_optimizer(model, config.train, CPU)
    train_a_little(model, optimizer)
    path = save(tmp_path / "best", config, tokenizer_dir, model, optimizer, iteration=42)

    assert sorted(p.name for p in path.iterdir()) == [
        "config.toml",
        "model.safetensors",
        "optimizer.pt",
        "state.json",
        "tokenizer",
    ]
    checkpoint = ckpt.open_checkpoint(path)
    assert checkpoint.path == path
    assert checkpoint.config == config
    assert checkpoint.state["iter"] == 42
    assert checkpoint.state["best_val_loss"] == 2.5
    assert set(checkpoint.state["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert json.loads((path / "state.json").read_text("utf-8")) == checkpoint.state
    tokenizer = load_tokenizer(checkpoint.tokenizer_dir)
    original = load_tokenizer(tokenizer_dir)
    assert tokenizer.encode("Good night") == original.encode("Good night")
    assert tokenizer.vocab_size == config.model.vocab_size
    # Nothing is left behind next to the checkpoint.
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_weights_and_optimizer_need_no_pickle(
    tmp_path: Path, config: ExperimentConfig, tokenizer_dir: Path
) -> None:
    model = build_model(config, seed=0)
    optimizer = build_optimizer(model, config.train, CPU)
    train_a_little(model, optimizer)
    path = save(tmp_path / "last", config, tokenizer_dir, model, optimizer)

    with safe_open(str(path / "model.safetensors"), framework="pt") as weights:
        names = set(weights.keys())
        embedding = weights.get_tensor("wte.weight" if "wte.weight" in names else "lm_head.weight")
    assert torch.equal(embedding, model.wte.weight.detach())
    assert "h.0.attn.c_attn.weight" in names

    state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    assert set(state) == {"state", "param_groups"}
    assert len(state["state"]) == len(list(model.parameters()))


def test_rng_states_round_trip_through_state_json(
    tmp_path: Path, config: ExperimentConfig, tokenizer_dir: Path
) -> None:
    model = build_model(config, seed=0)
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    path = save(tmp_path / "last", config, tokenizer_dir, model)  # captures the states above
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3))

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    ckpt.restore_rng_state(ckpt.open_checkpoint(path).state["rng"])
    restored = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    assert restored[0] == expected[0]
    assert restored[1] == expected[1]
    assert torch.equal(restored[2], expected[2])


def test_restore_rng_state_replays_every_generator() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = json.loads(json.dumps(ckpt.capture_rng_state()))  # must survive JSON
    first = (random.random(), np.random.rand(4).tolist(), torch.rand(4))
    ckpt.restore_rng_state(state)
    second = (random.random(), np.random.rand(4).tolist(), torch.rand(4))
    assert first[0] == second[0]
    assert first[1] == second[1]
    assert torch.equal(first[2], second[2])


def test_without_optimizer_there_is_no_optimizer_state(
    tmp_path: Path, config: ExperimentConfig, tokenizer_dir: Path
) -> None:
    model = build_model(config, seed=0)
    path = save(tmp_path / "best", config, tokenizer_dir, model, optimizer=None)
    assert not (path / "optimizer.pt").exists()
    checkpoint = ckpt.open_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"holds no optimizer state; it cannot be resumed"):
        ckpt.load_optimizer(checkpoint, build_optimizer(model, config.train, CPU))


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "runs" / "tiny" / "main" / "checkpoints" / "best"
    with pytest.raises(CheckpointError, match=r"^no checkpoint at .*best; train first$"):
        ckpt.open_checkpoint(missing)
    assert issubclass(CheckpointError, MLPlaygroundError)


def test_incomplete_checkpoint_names_what_is_missing(
    tmp_path: Path, config: ExperimentConfig, tokenizer_dir: Path
) -> None:
    path = save(tmp_path / "last", config, tokenizer_dir, build_model(config, seed=0))
    (path / "state.json").unlink()
    with pytest.raises(CheckpointError, match=r"is incomplete: missing state\.json$"):
        ckpt.open_checkpoint(path)


def test_weights_of_another_shape_do_not_load(
    tmp_path: Path, config: ExperimentConfig, tokenizer_dir: Path
) -> None:
    path = save(tmp_path / "last", config, tokenizer_dir, build_model(config, seed=0))
    checkpoint = ckpt.open_checkpoint(path)
    wider = config.model.model_copy(update={"n_embd": 48})
    torch.manual_seed(0)
    with pytest.raises(CheckpointError, match=r"(?s)last does not fit this model.*size"):
        ckpt.load_weights(checkpoint, GPT(wider))


@pytest.mark.parametrize(
    ("delta", "pattern"),
    [
        (1, r"(?s)does not fit this model.*Missing.*h\.2\.attn"),
        (-1, r"(?s)does not fit this model.*Unexpected.*h\.1\.attn"),
    ],
)
def test_weights_of_another_depth_do_not_load(
    tmp_path: Path, config: ExperimentConfig, tokenizer_dir: Path, delta: int, pattern: str
) -> None:
    path = save(tmp_path / "last", config, tokenizer_dir, build_model(config, seed=0))
    checkpoint = ckpt.open_checkpoint(path)
    other = config.model.model_copy(update={"n_layer": config.model.n_layer + delta})
    torch.manual_seed(0)
    with pytest.raises(CheckpointError, match=pattern):
        ckpt.load_weights(checkpoint, GPT(other))


def test_resolve_checkpoint() -> None:
    run_dir = Path("runs") / "tiny" / "main"
    assert ckpt.resolve_checkpoint(run_dir, "best") == run_dir / "checkpoints" / "best"
    assert ckpt.resolve_checkpoint(run_dir, "last") == run_dir / "checkpoints" / "last"
    assert ckpt.resolve_checkpoint(run_dir, "/x/ckpt") == Path("/x/ckpt")


# --- crash safety ----------------------------------------------------------------------------
# replace_dir(staging, target) goes: fsync staging → rmtree .<name>.old → rename target to
# .<name>.old → rename staging to target → rmtree .<name>.old. save_checkpoint writes staging at
# .<name>.staging first. Each test below freezes the directory at one of those points, as a kill
# would leave it, and checks that open_checkpoint still finds a complete checkpoint.


class Versions:
    """Two complete checkpoints of different weights: v1 in place at `target`, v2 aside."""

    def __init__(self, root: Path, config: ExperimentConfig, tokenizer_dir: Path) -> None:
        self.config = config
        self.target = root / "checkpoints" / "last"
        self.staging = self.target.with_name(".last.staging")
        self.old = self.target.with_name(".last.old")
        self.v1 = build_model(config, seed=1)
        self.v2 = build_model(config, seed=2)
        save(self.target, config, tokenizer_dir, self.v1, iteration=1)
        self.v2_dir = save(root / "aside" / "last", config, tokenizer_dir, self.v2, iteration=2)

    def assert_loads(self, expected_iter: int, expected: GPT) -> None:
        checkpoint = ckpt.open_checkpoint(self.target)
        assert checkpoint.state["iter"] == expected_iter
        loaded = build_model(self.config, seed=3)
        ckpt.load_weights(checkpoint, loaded)
        assert_same_weights(loaded, expected)


@pytest.fixture
def versions(tmp_path: Path, config: ExperimentConfig, tokenizer_dir: Path) -> Versions:
    return Versions(tmp_path, config, tokenizer_dir)


def test_kill_while_writing_staging_keeps_previous(
    versions: Versions, config: ExperimentConfig, tokenizer_dir: Path
) -> None:
    versions.staging.mkdir()
    data = (versions.v2_dir / "model.safetensors").read_bytes()
    (versions.staging / "model.safetensors").write_bytes(data[: len(data) // 2])
    versions.assert_loads(1, versions.v1)
    # The next save clears the half-written staging and replaces cleanly.
    v3 = build_model(config, seed=4)
    save(versions.target, config, tokenizer_dir, v3, iteration=3)
    versions.assert_loads(3, v3)
    assert not versions.staging.exists()
    assert not versions.old.exists()


def test_kill_between_the_two_renames_recovers_previous(versions: Versions) -> None:
    os.replace(versions.v2_dir, versions.staging)  # staging complete and fsynced
    os.replace(versions.target, versions.old)  # first rename done, second not
    assert not versions.target.exists()
    versions.assert_loads(1, versions.v1)
    assert not versions.old.exists()


def test_recover_dir_puts_old_copy_back(versions: Versions) -> None:
    os.replace(versions.target, versions.old)
    recover_dir(versions.target)
    assert versions.target.is_dir()
    assert not versions.old.exists()
    versions.assert_loads(1, versions.v1)


def test_recover_dir_leaves_a_present_target_alone(versions: Versions) -> None:
    shutil.copytree(versions.v2_dir, versions.old)
    recover_dir(versions.target)
    assert versions.old.exists()  # not moved over the live checkpoint
    versions.assert_loads(1, versions.v1)


def test_kill_after_second_rename_gives_new(
    versions: Versions, config: ExperimentConfig, tokenizer_dir: Path
) -> None:
    os.replace(versions.target, versions.old)
    os.replace(versions.v2_dir, versions.target)  # the old copy was never removed
    versions.assert_loads(2, versions.v2)
    assert versions.old.exists()
    # The next save is not confused by the leftover.
    v3 = build_model(config, seed=4)
    save(versions.target, config, tokenizer_dir, v3, iteration=3)
    versions.assert_loads(3, v3)
    assert not versions.old.exists()


def test_kill_while_removing_old_copy_gives_new(versions: Versions) -> None:
    os.replace(versions.target, versions.old)
    os.replace(versions.v2_dir, versions.target)
    (versions.old / "model.safetensors").unlink()  # rmtree got part of the way
    shutil.rmtree(versions.old / "tokenizer")
    versions.assert_loads(2, versions.v2)


def test_replace_dir_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "out"
    first = tmp_path / "first"
    first.mkdir()
    (first / "a.txt").write_text("one", "utf-8")
    replace_dir(first, target)
    assert (target / "a.txt").read_text("utf-8") == "one"
    assert not first.exists()

    second = tmp_path / "second"
    (second / "sub").mkdir(parents=True)
    (second / "sub" / "b.txt").write_text("two", "utf-8")
    replace_dir(second, target)
    assert not (target / "a.txt").exists()
    assert (target / "sub" / "b.txt").read_text("utf-8") == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_save_leaves_no_staging_or_old_directories(
    tmp_path: Path, config: ExperimentConfig, tokenizer_dir: Path
) -> None:
    checkpoints = tmp_path / "checkpoints"
    for iteration in (1, 2, 3):
        save(
            checkpoints / "last",
            config,
            tokenizer_dir,
            build_model(config, iteration),
            None,
            iteration,
        )
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last"]
    assert ckpt.open_checkpoint(checkpoints / "last").state["iter"] == 3
