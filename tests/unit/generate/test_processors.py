from __future__ import annotations

import torch

from ml_playground.generate.processors import apply_repetition_penalty, suppress_tokens


def test_repetition_penalty_is_ctrl_style() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    # Positive logits are divided, negative multiplied: both become less likely.
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0]]


def test_repetition_penalty_of_one_is_a_no_op() -> None:
    logits = torch.randn(2, 5)
    seen = torch.ones(2, 5, dtype=torch.bool)
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.0), logits)


def test_suppress_tokens_in_all_rows_or_some() -> None:
    logits = torch.zeros(3, 4)
    everywhere = suppress_tokens(logits, [1, 3])
    assert torch.isinf(everywhere).tolist() == [[False, True, False, True]] * 3
    some = suppress_tokens(logits, [2], torch.tensor([True, False, True]))
    assert torch.isinf(some[:, 2]).tolist() == [True, False, True]
    assert torch.isfinite(some[:, [0, 1, 3]]).all()
    assert torch.equal(suppress_tokens(logits, []), logits)
