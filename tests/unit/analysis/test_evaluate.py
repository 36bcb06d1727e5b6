"""Scoring every token once: windows, the token stream, and bits per byte of known models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ml_playground.analysis.evaluate import (
    TokenStream,
    boundary_ids,
    evaluate_text,
    evaluate_tokens,
    windows,
)
from ml_playground.config.loading import config_to_toml
from ml_playground.config.schema import ExperimentConfig, ModelConfig
from ml_playground.data.tokenizers import CharTokenizer
from ml_playground.errors import DataError, MLPlaygroundError
from ml_playground.generate.service import LoadedModel, load_for_inference
from ml_playground.model.gpt import GPT
from ml_playground.train.checkpoint import save_checkpoint
from ml_playground.train.device import Precision

TEXT = "Früh am Morgen: 中文 und ñ.\nKING. Go!\n\n"
CHARS = sorted(set(TEXT + "\n"))
BLOCK = 8
FP32 = Precision(torch.device("cpu"), torch.float32)


def _checkpoint(root: Path, zero_head: bool) -> LoadedModel:
    torch.manual_seed(0)
    config = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=BLOCK, vocab_size=len(CHARS))
    model = GPT(config)
    if zero_head:  # every logit 0: the uniform distribution over the vocabulary
        with torch.no_grad():
            model.lm_head.weight.zero_()
    CharTokenizer(CHARS).save(root / "tok")
    path = save_checkpoint(
        root / "ckpt",
        model=model,
        optimizer=None,
        state={"iter": 3, "best_val_loss": None},
        config_toml=config_to_toml(ExperimentConfig(name="t", model=config)),
        tokenizer_dir=root / "tok",
    )
    return load_for_inference(path, "cpu")


@pytest.fixture(scope="module")
def uniform(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return _checkpoint(tmp_path_factory.mktemp("uniform"), zero_head=True)


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return _checkpoint(tmp_path_factory.mktemp("random"), zero_head=False)


@pytest.mark.parametrize(
    ("length", "block", "stride"), [(1, 4, 4), (23, 4, 4), (23, 4, 1), (23, 8, 3), (9, 8, 8)]
)
def test_windows_score_every_target_exactly_once(length: int, block: int, stride: int) -> None:
    first = 2
    scored: list[int] = []
    for window in windows(length, first, block, stride):
        assert 0 < window.end - window.start <= block
        assert window.keep <= window.end - window.start
        targets = range(window.start + 1, window.end + 1)
        scored += list(targets)[-window.keep :]
        # every scored target sees at least block - stride tokens of context (or all there is)
        assert window.end - window.keep + 1 - window.start >= min(block - stride + 1, first)
    assert scored == list(range(first, length))


def test_windows_reject_a_stride_beyond_the_block() -> None:
    with pytest.raises(MLPlaygroundError, match="stride"):
        list(windows(10, 1, 4, 5))


def test_token_stream_reads_across_parts() -> None:
    stream = TokenStream(
        [np.array([1, 2]), np.array([], dtype=np.uint16), np.arange(3, 8, dtype=np.uint16)]
    )
    assert len(stream) == 7
    assert stream.read(0, 7).tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert stream.read(1, 4).tolist() == [2, 3, 4]
    assert stream.read(5, 7).tolist() == [6, 7]
    assert stream.read(7, 7).tolist() == []


def test_uniform_model_costs_log2_vocab_bits_per_token(uniform: LoadedModel) -> None:
    result = evaluate_text(uniform, TEXT * 3, FP32)
    tokens = len(uniform.tokenizer.encode(TEXT * 3))
    n_bytes = len((TEXT * 3).encode("utf-8"))
    assert n_bytes > tokens  # multi-byte characters: bits per byte < bits per token
    assert result.tokens == tokens  # every token is scored, the first one too
    assert result.bytes == n_bytes
    report = result.as_dict()
    assert report["bits_per_byte"] == pytest.approx(math.log2(len(CHARS)) * tokens / n_bytes)
    assert report["perplexity"] == pytest.approx(len(CHARS))
    assert report["bits_per_token"] == pytest.approx(math.log2(len(CHARS)))


def _reference_loss(loaded: LoadedModel, ids: list[int], stride: int) -> float:
    """Each target scored one at a time with exactly the context the windows give it."""
    full = boundary_ids(loaded.tokenizer) + ids
    first = len(full) - len(ids)
    total = 0.0
    with torch.no_grad():
        for window in windows(len(full), first, BLOCK, stride):
            x = torch.tensor([full[window.start : window.end]])
            logits, _ = loaded.model(x, x)
            targets = torch.tensor(full[window.start + 1 : window.end + 1])
            losses = F.cross_entropy(logits[0], targets, reduction="none")
            total += float(losses[-window.keep :].sum())
    return total


@pytest.mark.parametrize("stride", [BLOCK, 3, 1])
def test_batched_scoring_matches_one_window_at_a_time(
    random_model: LoadedModel, stride: int
) -> None:
    ids = random_model.tokenizer.encode(TEXT * 2)
    result = evaluate_tokens(random_model, [np.array(ids[:7]), np.array(ids[7:])], 10, FP32, stride)
    assert result.tokens == len(ids)
    assert result.loss_sum == pytest.approx(_reference_loss(random_model, ids, stride), rel=1e-5)


def test_more_context_does_not_change_the_token_count_and_is_deterministic(
    random_model: LoadedModel,
) -> None:
    text = TEXT * 4
    first = evaluate_text(random_model, text, FP32)
    again = evaluate_text(random_model, text, FP32)
    sliding = evaluate_text(random_model, text, FP32, stride=2)
    assert first.loss_sum == again.loss_sum
    assert sliding.tokens == first.tokens
    assert sliding.loss_sum != first.loss_sum


def test_progress_reaches_the_total(random_model: LoadedModel) -> None:
    seen: list[tuple[int, int]] = []
    evaluate_text(
        random_model, TEXT * 3, FP32, progress=lambda done, total: seen.append((done, total))
    )
    assert seen[-1][0] == seen[-1][1] == len(random_model.tokenizer.encode(TEXT * 3))


def test_empty_text_is_a_user_error(random_model: LoadedModel) -> None:
    with pytest.raises(DataError, match="no text"):
        evaluate_text(random_model, "", FP32)
