"""GPT's loss skips IGNORE_INDEX targets: the mean over the scored ones, and exactly 0 (finite,
zero gradients) when a batch scores none."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ml_playground.config.schema import ModelConfig
from ml_playground.model.gpt import GPT, IGNORE_INDEX, cross_entropy


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=16, vocab_size=50))


def test_loss_is_the_mean_over_the_scored_targets() -> None:
    model = tiny_gpt()
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(50, (3, 16), generator=generator)
    y = torch.randint(50, (3, 16), generator=generator)
    scored = torch.rand(3, 16, generator=generator) < 0.4
    logits, loss = model(x, torch.where(scored, y, IGNORE_INDEX))
    assert loss is not None
    per_token = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")
    torch.testing.assert_close(loss, per_token[scored].mean())
    _, unmasked = model(x, y)  # no ignored target: the plain mean, as before
    assert unmasked is not None
    torch.testing.assert_close(unmasked, per_token.mean())


def test_an_all_ignored_batch_gives_a_finite_zero_loss_and_gradient() -> None:
    model = tiny_gpt()
    x = torch.randint(50, (2, 16), generator=torch.Generator().manual_seed(2))
    _, loss = model(x, torch.full_like(x, IGNORE_INDEX))
    assert loss is not None
    assert torch.isfinite(loss)
    assert loss.item() == 0.0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_cross_entropy_counts_only_scored_targets() -> None:
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])
    targets = torch.tensor([[0, IGNORE_INDEX, 1]])
    expected = (F.cross_entropy(logits[0, 0], torch.tensor(0)) + torch.log(torch.tensor(2.0))) / 2
    torch.testing.assert_close(cross_entropy(logits, targets), expected)
