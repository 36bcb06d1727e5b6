"""Tiny GPT checkpoints with every tensor randomised, for the export tests.

Random LayerNorm gains and biases matter: with GPT's initial values (ones, zeros) a mapping that
swapped a LayerNorm's weight and bias, or a transposed square matrix, could go unnoticed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from conftest import write_corpus
from ml_playground.config.loading import config_to_toml
from ml_playground.config.schema import DataConfig, ExperimentConfig, ModelConfig, SampleConfig
from ml_playground.data.tokenizers import Tokenizer, train_tokenizer
from ml_playground.model.gpt import GPT
from ml_playground.train.checkpoint import save_checkpoint

BLOCK_SIZE = 32
EXTRA_TEXT = "Café — naïve “quotes” 日本 😀\n"
"""Characters of 2, 3 and 4 UTF-8 bytes, so char vocabularies need merges in GGUF."""


def corpus_text(directory: Path) -> str:
    text = write_corpus(directory / "corpus.txt", n_lines=200).read_text("utf-8")
    return text + EXTRA_TEXT


def make_tokenizer(kind: str, text: str, vocab_size: int | None = None) -> Tokenizer:
    if vocab_size is None and kind != "char":
        vocab_size = 330 if kind.startswith("sentencepiece") else 300
    return train_tokenizer(DataConfig(tokenizer=kind, vocab_size=vocab_size), [text])


def _data_config(kind: str) -> DataConfig:
    if kind in ("char", "bpe", "sentencepiece_bpe", "sentencepiece_unigram"):
        return DataConfig(tokenizer=kind, vocab_size=None if kind == "char" else 300)
    return DataConfig(tokenizer=kind, tokenizer_name="ranks.tiktoken")


def randomize(model: GPT, seed: int = 0) -> GPT:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("weight") and param.dim() == 1:  # LayerNorm gains
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(0.3 * noise if param.dim() == 1 else 0.1 * noise)
    return model


def make_checkpoint(
    directory: Path,
    kind: str = "char",
    *,
    bias: bool = True,
    n_embd: int = 64,
    sample: dict[str, Any] | None = None,
    tokenizer: Tokenizer | None = None,
    seed: int = 0,
    **model_options: Any,
) -> Path:
    """A complete checkpoint directory holding a random 2-layer GPT and a `kind` tokenizer."""
    work = directory.parent / f"{directory.name}-src"
    work.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = make_tokenizer(kind, corpus_text(work))
    tokenizer.save(work / "tokenizer")
    model_config = ModelConfig(
        n_layer=2,
        n_head=2,
        n_embd=n_embd,
        block_size=BLOCK_SIZE,
        bias=bias,
        vocab_size=tokenizer.vocab_size,
        **model_options,
    )
    config = ExperimentConfig(
        name="tiny",
        data=_data_config(tokenizer.kind),
        model=model_config,
        sample=SampleConfig(**(sample or {"prompt": "KING."})),
    )
    model = randomize(GPT(model_config), seed)
    return save_checkpoint(
        directory,
        model=model,
        optimizer=None,
        state={"iter": 3, "best_val_loss": None},
        config_toml=config_to_toml(config),
        tokenizer_dir=work / "tokenizer",
    )
