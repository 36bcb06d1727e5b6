from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import pytest
import torch
from torch import nn

from ml_playground.config.schema import ModelConfig
from ml_playground.data.tokenizers import CharTokenizer
from ml_playground.generate.sampling import (
    SamplingParams,
    StreamingDecoder,
    filter_logits,
    generate_tokens,
    next_token,
)
from ml_playground.model.gpt import GPT

VOCAB = 11
BLOCK = 8


def tiny_gpt(seed: int = 0, block_size: int = BLOCK) -> GPT:
    """A real, untrained GPT: 2 layers, 32 dims (random weights give a spread-out distribution)."""
    torch.manual_seed(seed)
    config = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=VOCAB)
    return GPT(config)


class CountingModel(nn.Module):
    """Always predicts `last token + 1 (mod vocab)` and records every context it is shown."""

    def __init__(self, vocab_size: int = VOCAB, block_size: int = BLOCK) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.contexts: list[torch.Tensor] = []
        self.modes: list[bool] = []

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.contexts.append(idx.clone())
        self.modes.append(self.training)
        wanted = (idx[:, -1] + 1) % self.vocab_size
        logits = torch.nn.functional.one_hot(wanted, self.vocab_size).float() * 10.0
        return logits[:, None, :], None


def kept(logits: torch.Tensor) -> torch.Tensor:
    """Indices (per row, as a bool mask) that filtering left finite."""
    return torch.isfinite(logits)


def random_logits(seed: int, shape: tuple[int, ...] = (1, 50)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64) * 2.0


# --- filter_logits: temperature, top-k -----------------------------------------------------------
def test_temperature_divides_the_logits() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    out = filter_logits(logits, SamplingParams(temperature=2.0))
    assert torch.allclose(out, logits / 2.0)


@pytest.mark.parametrize("k", [1, 2, 7, 49])
def test_top_k_keeps_exactly_the_k_largest(k: int) -> None:
    logits = random_logits(seed=k, shape=(3, 50))
    out = filter_logits(logits, SamplingParams(top_k=k))
    mask = kept(out)
    assert mask.sum(dim=-1).tolist() == [k, k, k]
    top = torch.topk(logits, k, dim=-1).indices
    for row in range(3):
        assert set(mask[row].nonzero().flatten().tolist()) == set(top[row].tolist())
    # Surviving logits are untouched (temperature 1).
    assert torch.equal(out[mask], logits[mask])


def test_top_k_keeps_every_token_tied_with_the_kth() -> None:
    logits = torch.tensor([[3.0, 1.0, 1.0, 1.0, 0.0]])
    mask = kept(filter_logits(logits, SamplingParams(top_k=2)))
    assert mask.tolist() == [[True, True, True, True, False]]


@pytest.mark.parametrize("k", [5, 6, 1000])
def test_top_k_at_or_above_vocab_size_keeps_everything(k: int) -> None:
    logits = random_logits(seed=0, shape=(2, 5))
    out = filter_logits(logits, SamplingParams(top_k=k))
    assert torch.equal(out, logits)


# --- filter_logits: top-p ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("top_p", "expected"),
    [
        (0.05, [True, False, False, False]),
        (0.49, [True, False, False, False]),
        (0.51, [True, True, False, False]),
        (0.79, [True, True, False, False]),
        (0.81, [True, True, True, False]),
        (0.94, [True, True, True, False]),
        (0.96, [True, True, True, True]),
    ],
)
def test_top_p_keeps_the_smallest_nucleus(top_p: float, expected: list[bool]) -> None:
    # Probabilities 0.5, 0.3, 0.15, 0.05 — shuffled so the mask must map back to vocab order.
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3], dtype=torch.float64)
    order = [1, 3, 0, 2]  # vocab positions from most to least likely
    mask = kept(filter_logits(probs.log()[None, :], SamplingParams(top_p=top_p)))[0]
    assert [bool(mask[i]) for i in order] == expected


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("top_p", [0.1, 0.3, 0.7, 0.9, 0.97])
def test_top_p_nucleus_is_a_minimal_prefix_reaching_p(seed: int, top_p: float) -> None:
    logits = random_logits(seed, shape=(4, 30))
    mask = kept(filter_logits(logits, SamplingParams(top_p=top_p)))
    probs = torch.softmax(logits, dim=-1)
    for row in range(logits.size(0)):
        kept_probs = probs[row][mask[row]]
        dropped_probs = probs[row][~mask[row]]
        assert kept_probs.numel() >= 1
        # A prefix of the sorted distribution: every kept token beats every dropped one.
        if dropped_probs.numel():
            assert kept_probs.min() > dropped_probs.max()
        # Reaches p, and would not without its least likely member (so it is the smallest).
        assert kept_probs.sum() >= top_p
        assert kept_probs.sum() - kept_probs.min() < top_p


@pytest.mark.parametrize("top_p", [1e-9, 0.01])
def test_top_p_always_keeps_at_least_the_most_likely_token(top_p: float) -> None:
    logits = torch.tensor([[0.0, 100.0, 0.0], [1.0, 1.0, 1.0 + 1e-3]], dtype=torch.float64)
    mask = kept(filter_logits(logits, SamplingParams(top_p=top_p)))
    assert mask.tolist() == [[False, True, False], [False, False, True]]


def test_top_p_of_one_keeps_everything() -> None:
    logits = random_logits(seed=3, shape=(2, 20))
    assert torch.equal(filter_logits(logits, SamplingParams(top_p=1.0)), logits)


def test_top_k_and_top_p_combine() -> None:
    # top-k leaves 3 tokens; renormalised they are ~0.67, ~0.24, ~0.09, so the first two already
    # hold 0.91 ≥ 0.85. Measured against the unfiltered distribution they would hold only 0.84.
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.5, 0.0]], dtype=torch.float64)
    mask = kept(filter_logits(logits, SamplingParams(top_k=3, top_p=0.85)))
    assert mask.tolist() == [[True, True, False, False, False]]


# --- next_token ----------------------------------------------------------------------------------
def test_temperature_zero_is_argmax_and_ignores_every_rng() -> None:
    logits = random_logits(seed=5, shape=(6, 40)).float()
    expected = logits.argmax(dim=-1, keepdim=True)
    params = SamplingParams(temperature=0.0, top_k=3, top_p=0.5)
    for seed in range(3):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed + 100)
        token = next_token(logits, params, generator)
        assert token.shape == (6, 1)
        assert torch.equal(token, expected)


def test_sampling_never_picks_a_filtered_token() -> None:
    logits = random_logits(seed=9, shape=(1, 40)).float().expand(500, 40)
    allowed = set(torch.topk(logits[0], 3).indices.tolist())
    generator = torch.Generator().manual_seed(0)
    tokens = next_token(logits, SamplingParams(temperature=1.5, top_k=3), generator)
    assert set(tokens.flatten().tolist()) == allowed  # all three show up in 500 draws, nothing else


def test_same_generator_seed_gives_the_same_draw() -> None:
    logits = random_logits(seed=2, shape=(64, 40)).float()
    params = SamplingParams(temperature=1.0)
    first = next_token(logits, params, torch.Generator().manual_seed(7))
    torch.manual_seed(12345)  # the global RNG must not matter
    second = next_token(logits, params, torch.Generator().manual_seed(7))
    other = next_token(logits, params, torch.Generator().manual_seed(8))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


# --- generate_tokens -----------------------------------------------------------------------------
def test_generate_yields_max_new_tokens_steps_of_shape_batch_by_one() -> None:
    model = tiny_gpt()
    prompt = torch.zeros((3, 2), dtype=torch.long)
    steps = list(
        generate_tokens(model, prompt, 9, SamplingParams(), torch.Generator().manual_seed(0))
    )
    assert len(steps) == 9
    assert all(step.shape == (3, 1) for step in steps)
    assert all(0 <= int(t) < VOCAB for step in steps for t in step.flatten())


def test_generate_zero_new_tokens_yields_nothing() -> None:
    model = CountingModel()
    prompt = torch.zeros((1, 3), dtype=torch.long)
    assert list(generate_tokens(cast(GPT, model), prompt, 0, SamplingParams())) == []
    assert model.contexts == []


def test_generate_crops_the_context_to_block_size() -> None:
    model = CountingModel(block_size=4)
    prompt = torch.tensor([[0, 1]])
    greedy = SamplingParams(temperature=0.0)
    tokens = torch.cat(list(generate_tokens(cast(GPT, model), prompt, 6, greedy)), dim=1)
    assert tokens.tolist() == [[2, 3, 4, 5, 6, 7]]
    full = torch.cat([prompt, tokens], dim=1)
    lengths = [context.size(1) for context in model.contexts]
    assert lengths == [2, 3, 4, 4, 4, 4]
    for step, context in enumerate(model.contexts):
        end = prompt.size(1) + step
        # The model always sees the most recent tokens, never a stale window.
        assert torch.equal(context, full[:, max(0, end - 4) : end])


def test_a_real_gpt_generates_past_its_block_size() -> None:
    model = tiny_gpt(block_size=4)
    prompt = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    steps = list(generate_tokens(model, prompt, 12, SamplingParams(temperature=0.0)))
    assert len(steps) == 12


def test_generate_runs_in_eval_mode_and_restores_train_mode() -> None:
    model = CountingModel()
    model.train()
    for _ in generate_tokens(
        cast(GPT, model), torch.zeros((1, 1), dtype=torch.long), 3, SamplingParams()
    ):
        pass
    assert model.modes == [False, False, False]
    assert model.training


def test_greedy_generation_is_deterministic_and_matches_a_manual_argmax_loop() -> None:
    model = tiny_gpt().eval()
    prompt = torch.tensor([[1, 2, 3]])
    greedy = SamplingParams(temperature=0.0)

    def run(seed: int) -> list[int]:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        steps = generate_tokens(model, prompt, 15, greedy, generator)
        return [int(step) for step in steps]

    expected, idx = [], prompt
    with torch.no_grad():
        for _ in range(15):
            logits, _ = model(idx[:, -BLOCK:])
            token = logits[:, -1, :].argmax(dim=-1, keepdim=True)
            expected.append(int(token))
            idx = torch.cat([idx, token], dim=1)
    assert run(0) == run(1) == expected


def test_seeded_sampling_is_reproducible() -> None:
    model = tiny_gpt()
    prompt = torch.tensor([[0], [5]])
    params = SamplingParams(temperature=1.0, top_k=8, top_p=0.95)

    def run(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.cat(list(generate_tokens(model, prompt, 30, params, generator)), dim=1)

    first = run(42)
    torch.manual_seed(0)  # unrelated use of the global RNG in between
    torch.rand(100)
    assert torch.equal(first, run(42))
    assert not torch.equal(first, run(43))


# --- StreamingDecoder ----------------------------------------------------------------------------
def test_streaming_char_deltas_concatenate_to_the_full_decode() -> None:
    text = "KING.\nWhat say you, my lord?"
    tokenizer = CharTokenizer.train([text])
    decoder = StreamingDecoder(tokenizer.decode)
    ids = tokenizer.encode(text)
    deltas = [decoder.push(i) for i in ids]
    assert all(len(delta) == 1 for delta in deltas)
    assert "".join(deltas) == text == decoder.text


def utf8_bytes(ids: Sequence[int]) -> str:
    """A byte-level decode: one token per UTF-8 byte."""
    return bytes(ids).decode("utf-8", errors="replace")


@pytest.mark.parametrize("text", ["héllo wörld", "ROMEO 🙂 — 日本語!", "🙂🙂", "plain ascii"])
def test_streaming_holds_back_partial_multibyte_characters(text: str) -> None:
    decoder = StreamingDecoder(utf8_bytes)
    deltas = [decoder.push(b) for b in text.encode("utf-8")]
    assert all("\ufffd" not in delta for delta in deltas)
    assert "".join(deltas) == text == decoder.text


def test_streaming_text_includes_a_trailing_partial_character() -> None:
    decoder = StreamingDecoder(utf8_bytes)
    emitted = [decoder.push(b) for b in "a🙂".encode()[:3]]
    assert emitted == ["a", "", ""]
    assert decoder.text == "a\ufffd"
