"""The KV-cache decode loop: batched prompts, prefill once, then one token per step.

Prompts of different lengths are left-padded to a common length; the cache masks the padding and
gives each row position ids from 0, so a row in a batch computes what it would alone. Rows
finish independently (end-of-text, `max_new_tokens`, or the caller's `finish`), and a finished
row leaves the batch, so the others do not pay for it.

Past `block_size`: the position embeddings are learned for positions 0..block_size-1 only, so
the context becomes a sliding window. When a row's context would exceed `block_size`, its oldest
`shift` tokens are dropped (its window restarts at position 0) and the cache is rebuilt from the
windows by one prefill. `shift=1` is exactly nanoGPT's "crop to the last block_size tokens"
(and so rebuilds on every step past the block size); a larger shift keeps at least
`block_size + 1 - shift` tokens of context and rebuilds only every `shift` steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ml_playground.generate.processors import apply_repetition_penalty, suppress_tokens
from ml_playground.generate.sampling import SamplingParams, next_token
from ml_playground.model.gpt import GPT, KVCache

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class TokenStep:
    """One new token of one row; `finish_reason` is set on the row's last token."""

    row: int
    token: int
    finish_reason: FinishReason | None = None


def window_start(length: int, start: int, block_size: int, shift: int) -> int:
    """Where a row's context window begins, given `length` tokens so far.

    When `length - start` exceeds `block_size`, the window jumps forward so that it holds
    `block_size + 1 - shift` tokens (with `shift == 1`: the last `block_size`).
    """
    if length - start > block_size:
        return length - (block_size + 1 - shift)
    return start


class BatchDecoder:
    """Generates tokens for several prompts at once; see the module docstring.

    `step()` returns one `TokenStep` per row still running. With `use_cache=False` the same
    windows are recomputed from scratch every step (the slow reference, same tokens).
    """

    def __init__(
        self,
        model: GPT,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        max_new_tokens: int,
        *,
        generator: torch.Generator | None = None,
        eot_id: int | None = None,
        min_new_tokens: int = 0,
        use_cache: bool = True,
        shift: int | None = None,
    ) -> None:
        if model.training:
            raise ValueError("call model.eval() before decoding (dropout would make it random)")
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        self.model = model
        self.params = params
        self.max_new_tokens = max_new_tokens
        self.generator = generator
        self.eot_id = eot_id
        self.min_new_tokens = min_new_tokens
        self.use_cache = use_cache
        self.block_size = model.block_size
        self.shift = max(1, self.block_size // 4) if shift is None else shift
        if not 1 <= self.shift <= self.block_size:
            raise ValueError(f"shift must be in 1..{self.block_size}, got {self.shift}")
        self.device = model.wte.weight.device
        self.tokens = [list(p) for p in prompts]  # prompt + generated, per row
        self.generated = [0] * len(prompts)
        self.starts = [0] * len(prompts)  # each row's window start in `tokens`
        self.active = list(range(len(prompts)))  # rows still running, in batch order
        self.finish_reasons: dict[int, FinishReason] = {}
        self._cache: KVCache | None = None
        self._fresh = True  # nothing fed yet: the next forward is a prefill
        self._seen: torch.Tensor | None = None
        if params.repetition_penalty != 1.0:
            self._seen = torch.zeros(
                len(prompts), model.vocab_size, dtype=torch.bool, device=self.device
            )
            for row, prompt in enumerate(prompts):
                self._seen[row, list(prompt)] = True

    @property
    def done(self) -> bool:
        return not self.active

    def finish(self, row: int, reason: FinishReason = "stop") -> None:
        """End `row` early (the caller found a stop sequence); it leaves the batch."""
        if row in self.active:
            self._drop([row])
            self.finish_reasons[row] = reason

    @torch.no_grad()
    def step(self) -> list[TokenStep]:
        """One new token for every running row."""
        if not self.active:
            return []
        logits = self._next_logits()
        if self._seen is not None:
            logits = apply_repetition_penalty(logits, self._seen, self.params.repetition_penalty)
        if self.eot_id is not None and self.min_new_tokens > 0:
            early = torch.tensor(
                [self.generated[r] < self.min_new_tokens for r in self.active], device=self.device
            )
            logits = suppress_tokens(logits, [self.eot_id], early)
        chosen = next_token(logits, self.params, self.generator)  # (batch, 1)
        if self._seen is not None:
            self._seen.scatter_(1, chosen, True)
        steps, finished = [], []
        for row, token in zip(self.active, chosen[:, 0].tolist(), strict=True):
            self.tokens[row].append(token)
            self.generated[row] += 1
            reason: FinishReason | None = None
            if token == self.eot_id:
                reason = "stop"
            elif self.generated[row] >= self.max_new_tokens:
                reason = "length"
            if reason is not None:
                self.finish_reasons[row] = reason
                finished.append(row)
            steps.append(TokenStep(row, token, reason))
        self._drop(finished)
        return steps

    def _drop(self, rows: list[int]) -> None:
        if not rows:
            return
        keep = [i for i, row in enumerate(self.active) if row not in rows]
        self.active = [self.active[i] for i in keep]
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        if self._cache is not None:
            self._cache.select_rows(index)
        if self._seen is not None:
            self._seen = self._seen.index_select(0, index)

    def _next_logits(self) -> torch.Tensor:
        """(running rows, vocab) logits for each row's next token."""
        cache = self._cache
        if (
            self.use_cache
            and not self._fresh
            and cache is not None
            and cache.length < cache.max_len
        ):
            last = [[self.tokens[row][-1]] for row in self.active]
            idx = torch.tensor(last, dtype=torch.long, device=self.device)
            logits: torch.Tensor = self.model(idx, cache=cache)[0]
            return logits[:, -1, :]
        # Prefill: the first step, a full cache, or no cache at all.
        self._fresh = False
        return self._prefill()

    def _prefill(self) -> torch.Tensor:
        windows = []
        for row in self.active:
            length = len(self.tokens[row])
            self.starts[row] = window_start(length, self.starts[row], self.block_size, self.shift)
            windows.append(self.tokens[row][self.starts[row] :])
        width = max(len(w) for w in windows)
        pad = torch.tensor([width - len(w) for w in windows], device=self.device)
        idx = torch.tensor(
            [[0] * (width - len(w)) + w for w in windows], dtype=torch.long, device=self.device
        )
        self._cache = self.model.new_cache(len(windows), pad)
        logits: torch.Tensor = self.model(idx, cache=self._cache)[0]
        return logits[:, -1, :]
