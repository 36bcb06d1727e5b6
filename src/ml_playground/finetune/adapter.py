"""`LoRAAdapter`: the training loop's `ModelAdapter` for a Hugging Face model with LoRA.

The loop builds, checkpoints and resumes through it, and otherwise runs as for our GPT: same
batches, optimizer (over the adapter weights only: the base is frozen), NaN guard, callbacks,
tracking and retention. A checkpoint holds PEFT's `adapter_model.safetensors` and
`adapter_config.json` (loadable by `PeftModel.from_pretrained`) beside our `optimizer.pt`,
`state.json`, `config.toml` and `tokenizer/`, so resuming is exact as for GPT runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn

from ml_playground.config.schema import ExperimentConfig
from ml_playground.errors import CheckpointError, ConfigError
from ml_playground.finetune.lora import add_lora
from ml_playground.finetune.model import HFCausalLM, context_length, load_pretrained
from ml_playground.model.gpt import GPT
from ml_playground.train.checkpoint import ADAPTER_FILE, Checkpoint


def unwrap(model: nn.Module) -> PeftModel:
    """The PEFT model inside the loop's model."""
    if not isinstance(model, HFCausalLM) or not isinstance(model.model, PeftModel):
        raise TypeError(f"expected an HFCausalLM around a PeftModel, got {type(model).__name__}")
    return model.model


class LoRAAdapter:
    """Builds the frozen `hf.model` with fresh LoRA adapters from a local folder.

    `bos_id` and `usable_vocab` come from the prepared tokenizer (see `HFCausalLM`).
    """

    def __init__(self, model_dir: Path, *, bos_id: int | None, usable_vocab: int) -> None:
        self.model_dir = model_dir
        self.bos_id = bos_id
        self.usable_vocab = usable_vocab

    def build(self, config: ExperimentConfig, device: torch.device) -> GPT:
        base = load_pretrained(self.model_dir, config.hf, device, quantize=True)
        limit = context_length(base)
        needed = config.model.block_size + (1 if self.bos_id is not None else 0)
        if limit is not None and needed > limit:
            raise ConfigError(
                f"model.block_size={config.model.block_size} does not fit {config.hf.model}'s "
                f"context of {limit} tokens; lower model.block_size"
            )
        wrapper = HFCausalLM(
            add_lora(base, config),
            config.model.block_size,
            bos_id=self.bos_id,
            usable_vocab=self.usable_vocab,
            checkpointing=config.hf.gradient_checkpointing,
        )
        if self.usable_vocab > wrapper.vocab_size:
            raise ConfigError(
                f"the tokenizer has {self.usable_vocab} tokens but {config.hf.model} embeds only "
                f"{wrapper.vocab_size}; use the tokenizer that came with the model"
            )
        # HFCausalLM has the interface of GPT that the loop uses (see its module docstring).
        return cast(GPT, wrapper)

    def resume_mismatch(self, saved: ExperimentConfig, config: ExperimentConfig) -> str | None:
        if saved.lora != config.lora:
            return "[lora]"
        if (saved.hf.model, saved.hf.revision) != (config.hf.model, config.hf.revision):
            return "[hf] model"
        if saved.model != config.model:
            return "[model]"
        return None

    def save_weights(self, model: GPT, folder: Path) -> None:
        unwrap(model).save_pretrained(str(folder), safe_serialization=True)

    def load_weights(self, checkpoint: Checkpoint, model: GPT) -> None:
        path = checkpoint.path / ADAPTER_FILE
        if not path.is_file():
            raise CheckpointError(
                f"{checkpoint.path} holds no LoRA adapter ({ADAPTER_FILE}); pass --no-resume "
                f"(or another train.run_name) to start a fine-tune over"
            )
        result: Any = set_peft_model_state_dict(unwrap(model), load_file(str(path)))
        missing = [key for key in result.missing_keys if "lora_" in key]
        if missing or result.unexpected_keys:
            raise CheckpointError(
                f"{path} does not fit this model (missing {missing[:4]}, unexpected "
                f"{list(result.unexpected_keys)[:4]})"
            )
