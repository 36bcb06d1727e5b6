"""Logits processors: small functions that reshape next-token logits before a token is picked.

They run in this order (as in Hugging Face `generate`): repetition penalty, then suppression of
end-of-text until `min_new_tokens` are out, then temperature / top-k / top-p
(`ml_playground.generate.sampling.filter_logits`). Each takes and returns (batch, vocab) logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019) on every token a row has already seen.

    `seen` is a (batch, vocab) bool mask. A seen token's logit is divided by `penalty` when
    positive and multiplied by it when negative, so `penalty > 1` always makes it less likely
    (dividing a negative logit would make it *more* likely). `penalty == 1` changes nothing.
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def suppress_tokens(
    logits: torch.Tensor, token_ids: Sequence[int], rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Set `token_ids` to -inf, in every row or only where the (batch,) bool mask `rows` is set."""
    if not token_ids:
        return logits
    banned = torch.zeros(logits.size(-1), dtype=torch.bool, device=logits.device)
    banned[list(token_ids)] = True
    mask = banned[None, :] if rows is None else rows[:, None] & banned[None, :]
    return logits.masked_fill(mask, float("-inf"))
