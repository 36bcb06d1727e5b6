"""LoRA adapters on a Hugging Face model, through PEFT (`[lora]` → `peft.LoraConfig`).

Default targets per architecture follow common practice (QLoRA, torchtune): every attention
projection; `lora.mlp` adds the MLP projections. GPT-2's fused `c_attn` and `c_proj` are
`Conv1D` layers (weights stored transposed), which PEFT must be told about (`fan_in_fan_out`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn
from transformers import PreTrainedModel

from ml_playground.config.schema import ExperimentConfig, LoRAConfig
from ml_playground.errors import ConfigError
from ml_playground.finetune.model import enable_gradient_checkpointing

LLAMA_LIKE = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3", "gemma3_text")
ATTENTION_TARGETS: dict[str, list[str]] = {
    **{name: ["q_proj", "k_proj", "v_proj", "o_proj"] for name in LLAMA_LIKE},
    "gpt2": ["c_attn", "c_proj"],  # c_proj: attention's output and the MLP's (same name)
}
MLP_TARGETS: dict[str, list[str]] = {
    **{name: ["gate_proj", "up_proj", "down_proj"] for name in LLAMA_LIKE},
    "gpt2": ["c_fc"],
}


@contextmanager
def quiet_peft() -> Iterator[None]:
    """PEFT calls transformers' `is_gradient_checkpointing` / `gradient_checkpointing_enable`,
    which transformers 5 deprecates (FutureWarning on every call); theirs to fix, not ours."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated")
        warnings.filterwarnings("ignore", "`gradient_checkpointing_enable` is deprecated")
        yield


def target_modules(lora: LoRAConfig, model_type: str) -> list[str]:
    """`lora.target_modules`, or the defaults for `model_type` (then PEFT's own table)."""
    if lora.target_modules is not None:
        return list(lora.target_modules)
    if model_type in ATTENTION_TARGETS:
        return ATTENTION_TARGETS[model_type] + (MLP_TARGETS[model_type] if lora.mlp else [])
    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
    raise ConfigError(
        f"no default LoRA targets for model type '{model_type}'; name its projection layers, "
        f"e.g. lora.target_modules=['q_proj','v_proj']"
    )


def uses_conv1d(model: nn.Module, targets: list[str]) -> bool:
    """Whether the targeted layers are transformers' `Conv1D` (GPT-2 family)."""
    return any(
        type(module).__name__ == "Conv1D" and name.rsplit(".", 1)[-1] in targets
        for name, module in model.named_modules()
    )


def lora_config(lora: LoRAConfig, model: PreTrainedModel) -> LoraConfig:
    targets = target_modules(lora, str(model.config.model_type))
    found = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = sorted(set(targets) - found)
    if missing:
        raise ConfigError(
            f"lora.target_modules names {missing}, which this {model.config.model_type} model "
            f"does not have; its layers include {sorted(found - {''})[:12]}"
        )
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias=lora.bias,
        task_type="CAUSAL_LM",
        fan_in_fan_out=uses_conv1d(model, targets),
    )


def add_lora(model: PreTrainedModel, config: ExperimentConfig) -> PeftModel:
    """Freeze `model` and wrap it with fresh LoRA adapters (B = 0: the output is unchanged).

    4-bit models first go through PEFT's `prepare_model_for_kbit_training` (norms in float32,
    input gradients for checkpointing).
    """
    hf = config.hf
    if hf.load_in_4bit:
        with quiet_peft():
            model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
                model,
                use_gradient_checkpointing=hf.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
    elif hf.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    settings = lora_config(config.lora, model)
    with quiet_peft():
        peft_model = get_peft_model(model, settings)
    assert isinstance(peft_model, PeftModel)
    # Recorded in adapter_config.json: the base a user (or PEFT) loads this adapter onto.
    peft_model.peft_config["default"].base_model_name_or_path = hf.model
    return peft_model
