"""Loading a fine-tuned checkpoint for sampling and serving: base model + LoRA adapter, or a
merged model (`ml-playground merge`). `ml_playground.generate.service` calls this when a
checkpoint's config names `hf.model`, so transformers is imported only for such checkpoints."""

from __future__ import annotations

import torch
from peft import PeftModel
from torch import nn

from ml_playground.data.tokenizers import HuggingFaceTokenizer, Tokenizer
from ml_playground.errors import CheckpointError
from ml_playground.finetune.hub import resolve_model_dir
from ml_playground.finetune.lora import quiet_peft
from ml_playground.finetune.model import HFCausalLM, context_length, load_pretrained
from ml_playground.train.checkpoint import ADAPTER_FILE, Checkpoint

HF_CONFIG_FILE = "config.json"
"""A merged checkpoint is also a save_pretrained folder: config.json + model.safetensors."""


def load_finetuned(
    checkpoint: Checkpoint, tokenizer: Tokenizer, device: torch.device
) -> HFCausalLM:
    """The checkpoint's model in eval mode, its context window as `block_size`."""
    hf = checkpoint.config.hf
    path = checkpoint.path
    model: nn.Module
    if (path / ADAPTER_FILE).is_file():
        base = load_pretrained(resolve_model_dir(hf), hf, device, quantize=True)
        with quiet_peft():
            model = PeftModel.from_pretrained(base, str(path))
    elif (path / HF_CONFIG_FILE).is_file():
        model = load_pretrained(path, hf, device, quantize=False)
    else:
        raise CheckpointError(
            f"{path} is a fine-tune checkpoint without weights: it has neither {ADAPTER_FILE} "
            f"nor {HF_CONFIG_FILE} (a merged model)"
        )
    bos_id = tokenizer.bos_id if isinstance(tokenizer, HuggingFaceTokenizer) else None
    limit = context_length(model)
    block_size = (
        limit - (1 if bos_id is not None else 0)
        if limit is not None
        else checkpoint.config.model.block_size
    )
    wrapper = HFCausalLM(model, block_size, bos_id=bos_id, usable_vocab=tokenizer.vocab_size)
    return wrapper.to(device).eval()
