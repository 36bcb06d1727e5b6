"""Sampling from a checkpoint directory: load model + tokenizer, then stream text.

Reading a checkpoint uses `train.checkpoint` (the one place that knows the format); nothing here
needs a dataset or a run directory, only the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ml_playground.config.schema import SampleConfig
from ml_playground.data.tokenizers import Tokenizer, load_tokenizer
from ml_playground.errors import MLPlaygroundError
from ml_playground.generate.sampling import SamplingParams, StreamingDecoder, generate_tokens
from ml_playground.model.gpt import GPT
from ml_playground.train.checkpoint import (
    Checkpoint,
    load_ema_weights,
    load_weights,
    open_checkpoint,
)
from ml_playground.train.device import resolve_device


@dataclass(frozen=True)
class LoadedModel:
    model: GPT
    tokenizer: Tokenizer
    checkpoint: Checkpoint
    device: torch.device


def load_for_inference(path: Path, device: str = "auto", weights: str = "model") -> LoadedModel:
    """A ready-to-sample model (eval mode) from a checkpoint directory.

    `weights="ema"` loads the moving average of the weights (`ema.safetensors`) instead.
    """
    checkpoint = open_checkpoint(path)
    tokenizer = load_tokenizer(checkpoint.tokenizer_dir)
    torch_device = resolve_device(device)
    model = GPT(checkpoint.config.model)
    load_weights(checkpoint, model)
    if weights == "ema":
        load_ema_weights(checkpoint, model)
    model.to(torch_device).eval()
    return LoadedModel(model, tokenizer, checkpoint, torch_device)


def encode_prompt(loaded: LoadedModel, prompt: str) -> list[int]:
    """The prompt's token ids, or a clear error (empty, or characters the tokenizer lacks)."""
    if not prompt:
        raise MLPlaygroundError("the prompt is empty; give at least one character (--prompt)")
    return loaded.tokenizer.encode(prompt)


def sample_texts(
    loaded: LoadedModel,
    settings: SampleConfig,
    on_text: Callable[[int, str], None] | None = None,
) -> list[str]:
    """Draw `settings.num_samples` continuations of `settings.prompt`, one after another.

    `on_text(sample_index, delta)` receives text as it is generated (for streaming to a terminal).
    The returned strings are the continuations without the prompt.
    """
    prompt_ids = encode_prompt(loaded, settings.prompt)
    params = SamplingParams(settings.temperature, settings.top_k or None, settings.top_p)
    generator = torch.Generator(device=loaded.device).manual_seed(settings.seed)
    outputs = []
    for index in range(settings.num_samples):
        context = torch.tensor([prompt_ids], dtype=torch.long, device=loaded.device)
        decoder = StreamingDecoder(loaded.tokenizer.decode)
        for token in generate_tokens(
            loaded.model, context, settings.max_new_tokens, params, generator
        ):
            delta = decoder.push(int(token[0, 0]))
            if delta and on_text is not None:
                on_text(index, delta)
        outputs.append(decoder.text)
    return outputs
