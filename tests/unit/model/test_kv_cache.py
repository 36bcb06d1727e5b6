from __future__ import annotations

import pytest
import torch

from ml_playground.config.schema import ModelConfig
from ml_playground.model.gpt import GPT

VOCAB = 23
BLOCK = 12


def model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=VOCAB)
    return GPT(config).eval()


def tokens(batch: int, time: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, time), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_prefill_then_single_steps_match_the_uncached_forward() -> None:
    gpt = model()
    idx = tokens(3, BLOCK)
    cache = gpt.new_cache(3)
    prefill, _ = gpt(idx[:, :5], cache=cache)
    torch.testing.assert_close(prefill, gpt(idx[:, :5])[0])
    for t in range(5, BLOCK):
        step, _ = gpt(idx[:, t : t + 1], cache=cache)
        torch.testing.assert_close(step, gpt(idx[:, : t + 1])[0])
    assert cache.length == BLOCK


@torch.no_grad()
def test_a_multi_token_chunk_after_a_prefix_is_causal() -> None:
    gpt = model()
    idx = tokens(2, 9)
    cache = gpt.new_cache(2)
    gpt(idx[:, :4], cache=cache)
    chunk, _ = gpt(idx[:, 4:9], cache=cache)
    torch.testing.assert_close(chunk, gpt(idx)[0])


@torch.no_grad()
def test_left_padded_rows_compute_what_they_would_alone() -> None:
    gpt = model()
    rows = [tokens(1, n, seed=n)[0].tolist() for n in (7, 3, 5)]
    width = max(len(r) for r in rows)
    pad = torch.tensor([width - len(r) for r in rows])
    idx = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    cache = gpt.new_cache(3, pad)
    batched, _ = gpt(idx, cache=cache)
    nxt = tokens(3, 1, seed=99)
    batched_step, _ = gpt(nxt, cache=cache)
    for i, row in enumerate(rows):
        alone, _ = gpt(torch.tensor([row]))
        torch.testing.assert_close(batched[i], alone[0])
        alone_step, _ = gpt(torch.tensor([[*row, int(nxt[i, 0])]]))
        torch.testing.assert_close(batched_step[i], alone_step[0])
    assert torch.isfinite(batched).all()


@torch.no_grad()
def test_dropping_rows_keeps_the_others_intact() -> None:
    gpt = model()
    idx = tokens(3, 6)
    cache = gpt.new_cache(3, torch.tensor([0, 2, 1]))
    gpt(idx, cache=cache)
    cache.select_rows(torch.tensor([0, 2]))
    out, _ = gpt(tokens(2, 1, seed=5), cache=cache)
    assert out.shape == (2, 1, VOCAB)
    assert cache.pad is not None
    assert cache.pad.tolist() == [0, 1]


@torch.no_grad()
def test_the_cache_refuses_to_overflow_block_size() -> None:
    gpt = model()
    cache = gpt.new_cache(1)
    gpt(tokens(1, BLOCK), cache=cache)
    with pytest.raises(ValueError, match="KV cache holds 12 positions"):
        gpt(tokens(1, 1), cache=cache)


def test_training_forward_ignores_the_cache_machinery() -> None:
    # Same seed, same batch: the no-cache path is the training path, with dropout and gradients.
    torch.manual_seed(0)
    config = ModelConfig(
        n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=VOCAB, dropout=0.1
    )
    gpt = GPT(config).train()
    idx = tokens(4, BLOCK)
    torch.manual_seed(1)
    _, loss = gpt(idx, targets=idx)
    torch.manual_seed(1)
    _, again = gpt(idx, targets=idx)
    assert loss is not None
    assert again is not None
    assert loss.item() == again.item()
    loss.backward()
    assert gpt.wte.weight.grad is not None


def test_model_generate_greedy_crops_to_block_size() -> None:
    gpt = model()
    out = gpt.generate(tokens(2, 3), BLOCK * 2, temperature=0.0)
    assert out.shape == (2, 3 + BLOCK * 2)
    sampled = gpt.generate(tokens(1, 3), 5, temperature=1.0, top_k=3)
    assert sampled.shape == (1, 8)
