"""Which checkpoint to export, and our GPT's weights in GPT-2's vocabulary of tensors.

`resolve_source` accepts what `sample` and `serve` accept: a preset name or TOML file (then the
run's `best` checkpoint, falling back to `last`; or `--checkpoint last|PATH`), or a checkpoint
directory, which brings its own config.

Both target formats (Hugging Face's `GPT2LMHeadModel`, llama.cpp's `gpt2` architecture) are the
GPT-2 network: pre-LayerNorm blocks, learned absolute positions, a 4x GELU MLP, an output head
tied to the token embedding, and biases everywhere. Our GPT is that network when `model.bias` is
true; with `bias = false` (our default) it is the same network with every bias zero, which is
what `gpt2_tensors` writes out. Any model option GPT-2 cannot express is refused by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ml_playground.config.loading import resolve_config
from ml_playground.config.schema import ExperimentConfig, ModelConfig
from ml_playground.errors import ConfigError
from ml_playground.export.common import ExportError
from ml_playground.generate.service import LoadedModel, load_for_inference
from ml_playground.model.gpt import GPT
from ml_playground.train.loop import run_dir_for
from ml_playground.train.run_checkpoint import find_run_checkpoint

GPT2_OPTIONS = frozenset(
    {"n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "vocab_size", "vocab_multiple"}
)
"""`[model]` fields GPT-2 has a place for. Dropout only matters in training; `vocab_multiple`
pads the embedding with rows no token uses and no logit shows, so export simply drops them."""

LAYER_NORMS = ("ln_1", "ln_2")
LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
LAYER_NORM_EPS = 1e-5
"""What `ml_playground.model.gpt.LayerNorm` uses."""


@dataclass(frozen=True)
class ExportSource:
    """A checkpoint to export, the config to export it with, and which weights to take."""

    checkpoint: Path
    config: ExperimentConfig
    weights: str


def resolve_source(
    experiment: str,
    overrides: list[str] | None,
    config_file: Path | None,
    workdir: Path,
    flags: dict[str, Any],
    notice: Callable[[str], None] = lambda _message: None,
) -> ExportSource:
    """Find the checkpoint `experiment` names (a preset/TOML, or a checkpoint directory).

    `flags` is a `{"sample": {...}}` layer: `checkpoint` and `weights` are the same settings
    `sample` uses, so export picks the checkpoint `sample` would.
    """
    target = Path(experiment)
    is_checkpoint = target.is_dir() and (target / "config.toml").is_file()
    if is_checkpoint and "checkpoint" in flags.get("sample", {}):
        raise ConfigError(f"{target} is a checkpoint already; drop --checkpoint")
    source = str(target / "config.toml") if is_checkpoint else experiment
    cfg = resolve_config(source, overrides, config_file, flags)
    if is_checkpoint:
        return ExportSource(target, cfg, cfg.sample.weights)
    path = find_run_checkpoint(
        run_dir_for(workdir, cfg),
        cfg.sample.checkpoint,
        verb="exporting",
        creator=f"ml-playground train {cfg.name}",
        say=notice,
        directory_ok=True,
    )
    return ExportSource(path, cfg, cfg.sample.weights)


def load_source(source: ExportSource) -> LoadedModel:
    """The checkpoint's model in float32 on the CPU, checked to be expressible as GPT-2."""
    loaded = load_for_inference(source.checkpoint, "cpu", source.weights)
    loaded.model.float()
    check_gpt2_compatible(loaded.model)
    return loaded


def check_gpt2_compatible(model: GPT) -> None:
    """Refuse, naming the option, a model GPT-2 (HF and llama.cpp) cannot represent exactly."""
    config = model.config
    for name, info in type(config).model_fields.items():
        if name in GPT2_OPTIONS:
            continue
        default = info.get_default(call_default_factory=True)
        value = getattr(config, name)
        if value != default:
            raise ExportError(
                f"model.{name}={value!r} has no equivalent in the GPT-2 architecture that Hugging "
                f"Face and llama.cpp implement; only models with model.{name}={default!r} (the "
                f"nanoGPT default) can be exported"
            )
    expected = set(_our_tensor_names(config)) | {"lm_head.weight"}
    actual = set(model.state_dict())
    if actual != expected:
        extra = sorted(actual - expected)
        missing = sorted(expected - actual)
        raise ExportError(
            "this model's tensors do not match GPT-2's layout "
            f"(unexpected: {', '.join(extra) or 'none'}; missing: {', '.join(missing) or 'none'}); "
            "it uses an architecture option export does not know"
        )
    if model.lm_head.weight.data_ptr() != model.wte.weight.data_ptr():
        raise ExportError(
            "the output head is not tied to the token embedding; GPT-2 ties them, so this "
            "model cannot be exported as GPT-2"
        )


def _our_tensor_names(config: ModelConfig) -> list[str]:
    suffixes = ("weight", "bias") if config.bias else ("weight",)
    names = ["wte.weight", "wpe.weight"]
    for layer in range(config.n_layer):
        for module in (*LAYER_NORMS, *LINEARS):
            names += [f"h.{layer}.{module}.{suffix}" for suffix in suffixes]
    names += [f"ln_f.{suffix}" for suffix in suffixes]
    return names


def gpt2_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """Every GPT-2 tensor under our names, float32 on the CPU; absent biases as zeros.

    Keys: `wte.weight`, `wpe.weight`, `h.{i}.{ln_1,ln_2}.{weight,bias}`,
    `h.{i}.{attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj}.{weight,bias}` (weights in
    `nn.Linear` layout: out x in) and `ln_f.{weight,bias}`. The head is `wte.weight` (tied).
    """
    state = {name: tensor.detach().float().cpu() for name, tensor in model.state_dict().items()}
    tensors: dict[str, torch.Tensor] = {
        "wte.weight": state["wte.weight"][: model.vocab_size],  # without padding rows
        "wpe.weight": state["wpe.weight"],
    }

    def add(prefix: str) -> None:
        weight = state[f"{prefix}.weight"]
        tensors[f"{prefix}.weight"] = weight
        tensors[f"{prefix}.bias"] = state.get(f"{prefix}.bias", torch.zeros(weight.shape[0]))

    for layer in range(model.config.n_layer):
        for module in (*LAYER_NORMS, *LINEARS):
            add(f"h.{layer}.{module}")
    add("ln_f")
    return tensors
