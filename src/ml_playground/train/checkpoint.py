"""Self-contained, crash-safe checkpoints.

A checkpoint directory holds everything needed to sample from, export, or resume a run:

    model.safetensors   weights (no pickle); a LoRA fine-tune has PEFT's adapter_model.safetensors
                        + adapter_config.json instead (`save_checkpoint(write_weights=...)`)
    ema.safetensors     the weights' moving average, when `train.ema_decay` is set
    optimizer.pt        optimizer state, tensors and numbers only (loads with weights_only=True)
    state.json          iteration, best metric, every RNG state, the data cursor, model config
    config.toml         the resolved experiment config
    tokenizer/          the tokenizer the model was trained with

It is written into a staging directory, fsynced, and renamed into place (see `fsutil`), so a
kill at any moment leaves the previous checkpoint loadable. With `keep > 1` the replaced
checkpoint survives as `<name>-<iter>` (e.g. `last-0000500`) and only the oldest are pruned.
"""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from ml_playground.config.loading import config_from_toml
from ml_playground.config.schema import ExperimentConfig
from ml_playground.errors import CheckpointError
from ml_playground.fsutil import recover_dir, replace_dir

REQUIRED_FILES = ("model.safetensors", "state.json", "config.toml")
ADAPTER_FILE = "adapter_model.safetensors"
"""A LoRA fine-tune's checkpoint holds PEFT's adapter (`adapter_model.safetensors` +
`adapter_config.json`) in place of `model.safetensors`; see `ml_playground.finetune`."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint on disk, with its config and state already parsed."""

    path: Path
    config: ExperimentConfig
    state: dict[str, Any]

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"


def encode_tensor(tensor: torch.Tensor) -> str:
    """A uint8 RNG-state tensor as base64 text, so it can live in JSON."""
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def decode_tensor(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and every CUDA device) RNG states, JSON-ready."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)
    return {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": encode_tensor(torch.get_rng_state()),
        "cuda": [encode_tensor(s) for s in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available()
        else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(decode_tensor(state["torch"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([decode_tensor(s) for s in state["cuda"]])


def history_dirs(directory: Path) -> list[Path]:
    """Older copies of `directory` kept by retention (`last-0000250`, ...), oldest first."""
    pattern = re.compile(rf"^{re.escape(directory.name)}-\d{{7}}$")
    if not directory.parent.is_dir():
        return []
    return sorted(p for p in directory.parent.iterdir() if pattern.match(p.name) and p.is_dir())


def _iteration_of(directory: Path) -> int | None:
    try:
        return int(json.loads((directory / "state.json").read_text("utf-8"))["iter"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_checkpoint(
    directory: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    config_toml: str,
    tokenizer_dir: Path,
    ema: dict[str, torch.Tensor] | None = None,
    keep: int = 1,
    write_weights: Callable[[Path], None] | None = None,
) -> Path:
    """Write a complete checkpoint to `directory`, replacing any previous one atomically.

    `keep` counts `directory` itself: with keep=3 the two checkpoints it replaced most recently
    stay beside it. The checkpoint just written is never pruned. `write_weights(folder)` replaces
    the default `model.safetensors` (a fine-tune writes its adapter instead).
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f".{directory.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    if write_weights is not None:
        write_weights(staging)
    else:
        save_model(model, str(staging / "model.safetensors"))
    if ema is not None:
        save_file({k: v.contiguous() for k, v in ema.items()}, str(staging / "ema.safetensors"))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    (staging / "state.json").write_text(json.dumps(state, indent=1) + "\n", "utf-8")
    (staging / "config.toml").write_text(config_toml, "utf-8")
    shutil.copytree(tokenizer_dir, staging / "tokenizer")
    keep_old_as = None
    if keep > 1 and directory.exists():
        old_iter = _iteration_of(directory)
        if old_iter is not None and old_iter != state.get("iter"):
            keep_old_as = directory.with_name(f"{directory.name}-{old_iter:07d}")
    replace_dir(staging, directory, keep_old_as=keep_old_as)
    for stale in history_dirs(directory)[: max(0, len(history_dirs(directory)) - (keep - 1))]:
        shutil.rmtree(stale)
    return directory


def open_checkpoint(directory: Path) -> Checkpoint:
    """Parse a checkpoint directory's config and state (weights are loaded separately)."""
    recover_dir(directory)
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if "model.safetensors" in missing and (directory / ADAPTER_FILE).is_file():
        missing.remove("model.safetensors")  # a LoRA checkpoint: the adapter is its weights
    if missing:
        if not directory.exists():
            raise CheckpointError(f"no checkpoint at {directory}; train first")
        raise CheckpointError(f"checkpoint {directory} is incomplete: missing {', '.join(missing)}")
    config = config_from_toml((directory / "config.toml").read_text("utf-8"))
    state = json.loads((directory / "state.json").read_text("utf-8"))
    return Checkpoint(directory, config, state)


def load_weights(checkpoint: Checkpoint, model: nn.Module) -> None:
    """Load `model.safetensors` into `model`, strictly: a missing or unexpected tensor makes
    safetensors raise, which names them."""
    try:
        load_model(model, str(checkpoint.path / "model.safetensors"), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint.path} does not fit this model: {exc}") from exc


def load_ema_weights(checkpoint: Checkpoint, model: nn.Module) -> None:
    """Load the moving-average weights (`ema.safetensors`) into `model`'s parameters."""
    path = checkpoint.path / "ema.safetensors"
    if not path.is_file():
        raise CheckpointError(
            f"{checkpoint.path} holds no EMA weights; train with train.ema_decay=0.999 "
            f"(for example) or sample with --weights model"
        )
    tensors = load_ema_state(checkpoint)
    params = dict(model.named_parameters())
    if set(tensors) != set(params):
        raise CheckpointError(f"{path} does not fit this model")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])


def load_ema_state(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint.path / "ema.safetensors"))


def load_optimizer(checkpoint: Checkpoint, optimizer: torch.optim.Optimizer) -> None:
    path = checkpoint.path / "optimizer.pt"
    if not path.is_file():
        raise CheckpointError(f"{checkpoint.path} holds no optimizer state; it cannot be resumed")
    optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def resolve_checkpoint(run_dir: Path, which: str) -> Path:
    """`best` / `last` inside the run's `checkpoints/`, or any path to a checkpoint directory."""
    if which in ("best", "last"):
        return run_dir / "checkpoints" / which
    return Path(which).expanduser()
