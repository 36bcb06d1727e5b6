"""`evaluate` on prompt/response pairs scores the response tokens only, as training does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ml_playground.analysis.evaluate import evaluate_tokens, split_masks, split_tokens
from ml_playground.config.loading import config_to_toml
from ml_playground.config.schema import DataConfig, ExperimentConfig, ModelConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.data.tokenizers import load_tokenizer
from ml_playground.errors import DataError
from ml_playground.generate.service import LoadedModel, load_for_inference
from ml_playground.model.gpt import GPT
from ml_playground.train.checkpoint import save_checkpoint
from ml_playground.train.device import Precision

FP32 = Precision(torch.device("cpu"), torch.float32)
BLOCK = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object], DataConfig]:
    root = tmp_path_factory.mktemp("pairs")
    lines = [json.dumps({"q": f"say {i} now", "a": f"ok {i % 7}!"}) + "\n" for i in range(30)]
    (root / "pairs.jsonl").write_text("".join(lines), "utf-8")
    config = DataConfig(
        corpus="jsonl", path=str(root / "pairs.jsonl"), prompt_field="q", response_field="a"
    )
    result = prepare_dataset(config, root / "work", "qa")
    return result.directory, result.info, config


@pytest.fixture(scope="module")
def loaded(
    tmp_path_factory: pytest.TempPathFactory,
    dataset: tuple[Path, dict[str, object], DataConfig],
) -> LoadedModel:
    directory, info, data = dataset
    root = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    vocab = int(str(info["vocab_size"]))
    config = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=BLOCK, vocab_size=vocab)
    path = save_checkpoint(
        root / "ckpt",
        model=GPT(config),
        optimizer=None,
        state={"iter": 1, "best_val_loss": None},
        config_toml=config_to_toml(ExperimentConfig(name="qa", data=data, model=config)),
        tokenizer_dir=directory / "tokenizer",
    )
    return load_for_inference(path, "cpu")


def by_hand(loaded: LoadedModel, tokens: np.ndarray, mask: np.ndarray) -> tuple[int, float]:
    """(scored targets, their summed loss): after the blank line that opens every document,
    windows of BLOCK targets, each with as much context as fits before it."""
    prefix = loaded.tokenizer.encode("\n\n")
    stream = np.concatenate([prefix, tokens]).astype(np.int64)
    scored = np.concatenate([np.zeros(len(prefix)), mask])
    total, count = 0.0, 0
    for first in range(len(prefix), len(stream), BLOCK):
        last = min(first + BLOCK, len(stream))  # targets stream[first:last]
        low = max(0, last - 1 - BLOCK)
        x = torch.from_numpy(stream[low : last - 1])[None]
        y = torch.from_numpy(stream[low + 1 : last])[None]
        with torch.no_grad():
            logits, _ = loaded.model(x, y)
        losses = F.cross_entropy(logits[0], y[0], reduction="none")[-(last - first) :]
        keep = torch.from_numpy(scored[first:last] != 0)
        total += float(losses[keep].double().sum())
        count += int(keep.sum())
    return count, total


def test_only_response_tokens_are_scored(
    loaded: LoadedModel, dataset: tuple[Path, dict[str, object], DataConfig]
) -> None:
    directory, info, _ = dataset
    parts, _ = split_tokens(loaded, directory, info, "val")
    found = split_masks(loaded, directory, info, "val", parts)
    assert found is not None
    masks, n_bytes = found
    assert n_bytes == info["val_response_bytes"]
    result = evaluate_tokens(loaded, parts, n_bytes, FP32, masks=masks)
    assert result.tokens == info["val_response_tokens"] == int(sum(m.sum() for m in masks))
    count, total = by_hand(loaded, np.concatenate(parts), np.concatenate(masks))
    assert result.tokens == count
    assert result.loss_sum == pytest.approx(total, rel=1e-6)
    # A sliding window scores the same targets (with more context).
    strided = evaluate_tokens(loaded, parts, n_bytes, FP32, stride=3, masks=masks)
    assert strided.tokens == result.tokens
    everything = evaluate_tokens(loaded, parts, int(str(info["val_bytes"])), FP32)
    assert everything.tokens == info["val_tokens"]


def test_a_cut_split_counts_the_bytes_of_its_scored_text(
    loaded: LoadedModel, dataset: tuple[Path, dict[str, object], DataConfig]
) -> None:
    directory, info, _ = dataset
    parts, _ = split_tokens(loaded, directory, info, "train", max_tokens=50)
    found = split_masks(loaded, directory, info, "train", parts)
    assert found is not None
    masks, n_bytes = found
    assert sum(map(len, masks)) == 50
    tokenizer = load_tokenizer(directory / "tokenizer")
    scored = np.concatenate(parts)[np.concatenate(masks) != 0]
    assert n_bytes == len(tokenizer.decode(scored.tolist()).encode())
    assert 0 < n_bytes < 50


def test_nothing_to_score_is_a_user_error(
    loaded: LoadedModel, dataset: tuple[Path, dict[str, object], DataConfig]
) -> None:
    directory, info, _ = dataset
    parts, _ = split_tokens(loaded, directory, info, "val")
    zeros = [np.zeros(len(part), dtype=np.uint8) for part in parts]
    with pytest.raises(DataError, match="no response tokens"):
        evaluate_tokens(loaded, parts, 1, FP32, masks=zeros)
