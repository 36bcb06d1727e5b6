"""Turning next-token logits into tokens: temperature, top-k, top-p, and the decode loop.

`temperature == 0` means greedy argmax, so it is deterministic without any seed. Sampling draws
from an explicit `torch.Generator`, so a seed reproduces a sample regardless of what else used
the global RNG.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ml_playground.model.gpt import GPT


@dataclass(frozen=True)
class SamplingParams:
    """How a token is picked from the logits; `repetition_penalty` is applied by the decode loop
    (`ml_playground.generate.decode`), which knows what each row has seen."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Scale by temperature and mask everything outside top-k / the top-p nucleus with -inf."""
    logits = logits / params.temperature
    if params.top_k is not None and params.top_k < logits.size(-1):
        kth_best = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if params.top_p is not None and params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the mass *before* it already reaches top_p; the top token always stays.
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= params.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> torch.Tensor:
    """One token id per row of `logits` (batch, vocab) → (batch, 1)."""
    if params.temperature == 0.0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    probs = torch.softmax(filter_logits(logits.float(), params), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate_tokens(
    model: GPT,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield one (batch, 1) tensor of new tokens per step, so callers can stream.

    The context is cropped to the model's block size, so generation can run past it. This loop
    has no KV cache (it re-runs the window every step) and works with any model that maps ids
    to logits; `ml_playground.generate.decode.BatchDecoder` is the fast, cached one.
    """
    was_training = model.training
    model.eval()
    try:
        idx = prompt_ids
        for _ in range(max_new_tokens):
            context = idx[:, -model.block_size :]
            logits, _ = model(context)
            token = next_token(logits[:, -1, :], params, generator)
            idx = torch.cat([idx, token], dim=1)
            yield token
    finally:
        model.train(was_training)


class StreamingDecoder:
    """Turns a growing list of ids into text deltas, holding back incomplete characters.

    Decoding token by token breaks multi-byte characters for byte-level tokenizers; decoding the
    whole sequence and emitting only the new suffix does not.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._emitted = 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._decode(self._ids)
        if text.endswith("\ufffd"):
            return ""
        delta = text[self._emitted :]
        self._emitted = len(text)
        return delta

    @property
    def text(self) -> str:
        """Everything decoded so far, including characters still held back."""
        return self._decode(self._ids)
