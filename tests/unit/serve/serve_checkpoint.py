"""A tiny random-init GPT checkpoint with a char tokenizer, for the serve tests."""

from __future__ import annotations

from pathlib import Path

import torch

from ml_playground.config.loading import config_to_toml
from ml_playground.config.schema import ExperimentConfig, ModelConfig
from ml_playground.data.tokenizers import CharTokenizer
from ml_playground.model.gpt import GPT
from ml_playground.train.checkpoint import save_checkpoint

CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,!?:;'\n"))
BLOCK_SIZE = 32


def make_checkpoint(directory: Path, name: str = "tiny", seed: int = 0, scale: float = 1.0) -> Path:
    """Save an untrained 2-layer GPT as a complete checkpoint directory.

    `seed` draws the weights; `scale` multiplies them, so that greedy text depends on the seed
    (GPT-2's small init makes every random model echo its last token).
    """
    torch.manual_seed(seed)
    model_config = ModelConfig(
        n_layer=2, n_head=2, n_embd=32, block_size=BLOCK_SIZE, vocab_size=len(CHARS)
    )
    config = ExperimentConfig(name=name, model=model_config)
    tokenizer_dir = directory.parent / f"{directory.name}-tokenizer"
    CharTokenizer(CHARS).save(tokenizer_dir)
    model = GPT(model_config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(scale)
    return save_checkpoint(
        directory,
        model=model,
        optimizer=None,
        state={"iter": 7, "best_val_loss": None},
        config_toml=config_to_toml(config),
        tokenizer_dir=tokenizer_dir,
    )
