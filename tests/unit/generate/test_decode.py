"""The KV-cache decode loop against the uncached references (`GPT.generate`, no-cache windows)."""

from __future__ import annotations

import pytest
import torch

from ml_playground.config.schema import ModelConfig
from ml_playground.generate.decode import BatchDecoder, window_start
from ml_playground.generate.sampling import SamplingParams
from ml_playground.model.gpt import GPT

VOCAB = 13
BLOCK = 8
GREEDY = SamplingParams(temperature=0.0)


def sharp_gpt(seed: int = 0) -> GPT:
    """A random GPT with weights scaled up, so greedy argmaxes are far from ties."""
    torch.manual_seed(seed)
    config = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=VOCAB)
    model = GPT(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(20.0)
    return model


def run(decoder: BatchDecoder, rows: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(rows)]
    while not decoder.done:
        for step in decoder.step():
            out[step.row].append(step.token)
    return out


PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11, 12, 0, 1, 2]]  # the last exceeds BLOCK


@pytest.mark.parametrize("new_tokens", [1, 5, 3 * BLOCK])
def test_cache_with_shift_1_equals_model_generate_greedy(new_tokens: int) -> None:
    model = sharp_gpt()
    for prompt in PROMPTS:
        expected = model.generate(torch.tensor([prompt]), new_tokens, temperature=0.0)
        got = run(BatchDecoder(model, [prompt], GREEDY, new_tokens, shift=1), 1)
        assert got[0] == expected[0, len(prompt) :].tolist()


def test_batched_left_padded_prompts_equal_one_at_a_time_past_block_size() -> None:
    model = sharp_gpt(1)
    batched = run(BatchDecoder(model, PROMPTS, GREEDY, 3 * BLOCK, shift=1), len(PROMPTS))
    for prompt, tokens in zip(PROMPTS, batched, strict=True):
        expected = model.generate(torch.tensor([prompt]), 3 * BLOCK, temperature=0.0)
        assert tokens == expected[0, len(prompt) :].tolist()


@pytest.mark.parametrize("shift", [2, 3, BLOCK])
def test_sliding_window_cache_equals_the_same_windows_without_cache(shift: int) -> None:
    model = sharp_gpt(2)
    cached = run(BatchDecoder(model, PROMPTS, GREEDY, 4 * BLOCK, shift=shift), len(PROMPTS))
    for prompt, tokens in zip(PROMPTS, cached, strict=True):
        plain = BatchDecoder(model, [prompt], GREEDY, 4 * BLOCK, shift=shift, use_cache=False)
        assert tokens == run(plain, 1)[0]


def test_window_start_keeps_block_plus_one_minus_shift_tokens() -> None:
    assert window_start(BLOCK, 0, BLOCK, 3) == 0
    assert window_start(BLOCK + 1, 0, BLOCK, 1) == 1
    assert window_start(BLOCK + 1, 0, BLOCK, 3) == 3
    assert window_start(BLOCK + 2, 3, BLOCK, 3) == 3


def test_seeded_sampling_is_reproducible_and_the_seed_matters() -> None:
    model = sharp_gpt()
    params = SamplingParams(temperature=1.0, top_k=5, top_p=0.9)

    def sample(seed: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed)
        return run(BatchDecoder(model, PROMPTS, params, 20, generator=generator), 3)

    first = sample(7)
    torch.manual_seed(123)
    torch.rand(10)  # the global RNG does not matter
    assert sample(7) == first
    assert sample(8) != first


def test_rows_finish_independently_on_eot_and_length() -> None:
    model = sharp_gpt()
    greedy = run(BatchDecoder(model, PROMPTS, GREEDY, 10), 3)
    eot = greedy[0][2]  # row 0 produces this token third
    decoder = BatchDecoder(model, PROMPTS, GREEDY, 10, eot_id=eot)
    tokens: list[list[int]] = [[], [], []]
    reasons: dict[int, str] = {}
    while not decoder.done:
        for step in decoder.step():
            tokens[step.row].append(step.token)
            if step.finish_reason is not None:
                reasons[step.row] = step.finish_reason
    assert tokens[0] == greedy[0][: greedy[0].index(eot) + 1]
    assert reasons[0] == "stop"
    for row in (1, 2):  # unaffected by row 0 leaving the batch
        if eot not in greedy[row]:
            assert tokens[row] == greedy[row]
            assert reasons[row] == "length"
    assert decoder.finish_reasons == reasons


def test_min_new_tokens_suppresses_eot_until_reached() -> None:
    model = sharp_gpt()
    prompt = [[1, 2, 3]]
    eot = run(BatchDecoder(model, prompt, GREEDY, 1), 1)[0][0]  # greedy's first token
    short = run(BatchDecoder(model, prompt, GREEDY, 10, eot_id=eot), 1)[0]
    assert short == [eot]
    longer = run(BatchDecoder(model, prompt, GREEDY, 10, eot_id=eot, min_new_tokens=4), 1)[0]
    assert len(longer) >= 4
    assert eot not in longer[:4]


def test_finish_removes_a_row_and_the_rest_continue() -> None:
    model = sharp_gpt()
    reference = run(BatchDecoder(model, PROMPTS, GREEDY, 12), 3)
    decoder = BatchDecoder(model, PROMPTS, GREEDY, 12)
    tokens: list[list[int]] = [[], [], []]
    for step in decoder.step():
        tokens[step.row].append(step.token)
    decoder.finish(1)
    while not decoder.done:
        for step in decoder.step():
            tokens[step.row].append(step.token)
    assert tokens[1] == reference[1][:1]
    assert tokens[0] == reference[0]
    assert tokens[2] == reference[2]
    assert decoder.finish_reasons[1] == "stop"


def test_repetition_penalty_changes_greedy_output_and_avoids_repeats() -> None:
    model = sharp_gpt()
    prompt = [[1, 2, 3]]
    plain = run(BatchDecoder(model, prompt, GREEDY, 12), 1)[0]
    penalty = SamplingParams(temperature=0.0, repetition_penalty=3.0)
    penalised = run(BatchDecoder(model, prompt, penalty, 12), 1)[0]

    def repeats(tokens: list[int]) -> int:
        return len(tokens) - len(set(tokens))

    assert repeats(penalised) < repeats(plain)


def test_decoder_needs_eval_mode_and_non_empty_prompts() -> None:
    model = sharp_gpt()
    with pytest.raises(ValueError, match="at least one token"):
        BatchDecoder(model, [[1], []], GREEDY, 3)
    model.train()
    with pytest.raises(ValueError, match="eval"):
        BatchDecoder(model, [[1]], GREEDY, 3)
