"""Regression: `sample.top_k=0` means "no top-k filtering". It must survive the config's TOML
round trip (saved with every run and checkpoint) and reach sampling as "off", not as k=0.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ml_playground.config.loading import config_from_toml, config_to_toml
from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.tokenizers import CharTokenizer, load_tokenizer
from ml_playground.generate.service import load_for_inference, sample_texts
from ml_playground.model.gpt import GPT
from ml_playground.train.checkpoint import save_checkpoint


def test_top_k_zero_survives_the_toml_round_trip(
    make_config: Callable[..., ExperimentConfig],
) -> None:
    config = make_config("sample.top_k=0")
    assert config.sample.top_k == 0
    text = config_to_toml(config)
    restored = config_from_toml(text)
    assert restored.sample.top_k == 0
    assert restored == config
    assert config_to_toml(restored) == text


def test_top_k_zero_samples_without_filtering(
    make_config: Callable[..., ExperimentConfig], tmp_path: Path
) -> None:
    tokenizer_dir = tmp_path / "tokenizer"
    CharTokenizer.train(["KING.\nGood night, my lord! What say you to me?"]).save(tokenizer_dir)
    vocab = load_tokenizer(tokenizer_dir).vocab_size
    base = make_config("sample.top_k=0", "sample.temperature=1.0", "sample.max_new_tokens=40")
    config = base.model_copy(update={"model": base.model.model_copy(update={"vocab_size": vocab})})
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        tmp_path / "checkpoint",
        model=GPT(config.model),
        optimizer=None,
        state={"iter": 0},
        config_toml=config_to_toml(config),
        tokenizer_dir=tokenizer_dir,
    )
    loaded = load_for_inference(checkpoint, "cpu")
    assert loaded.checkpoint.config.sample.top_k == 0  # as saved in the checkpoint

    def draw(top_k: int) -> str:
        settings = loaded.checkpoint.config.sample.model_copy(update={"top_k": top_k})
        return sample_texts(loaded, settings)[0]

    unfiltered = draw(0)
    assert len(unfiltered) == 40
    # k = vocabulary size filters nothing either: the same seed gives the same text.
    assert unfiltered == draw(vocab)
    # A real k changes the draw, so the comparison above is not vacuous.
    assert unfiltered != draw(1)
