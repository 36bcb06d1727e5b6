"""LIT: held-out examples (no LIT needed), the missing-extra error, and the app's models.

The app tests need `lit-nlp` (extra `lit`); where it is not installed they are skipped, and the
error a user gets instead is tested.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ml_playground.analysis.lit import LIT_MISSING, build_lit_app, heldout_examples, require_lit
from ml_playground.config.loading import config_to_toml
from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.errors import MLPlaygroundError
from ml_playground.generate.service import GenerationSettings, LoadedModel, load_for_inference
from ml_playground.model.gpt import GPT
from ml_playground.train.checkpoint import save_checkpoint
from ml_playground.train.loop import with_vocab_size

HAVE_LIT = importlib.util.find_spec("lit_nlp") is not None
needs_lit = pytest.mark.skipif(
    not HAVE_LIT, reason="lit-nlp is not installed (extra `lit`; it pins numpy<2)"
)
MakeConfig = Callable[..., ExperimentConfig]


@pytest.fixture
def dataset_and_model(
    make_config: MakeConfig, workdir: Path
) -> tuple[LoadedModel, Path, dict[str, Any]]:
    """A prepared tiny dataset and an untrained checkpoint that uses its tokenizer."""
    config = make_config()
    prepared = prepare_dataset(config.data, workdir, config.name)
    config = with_vocab_size(config, prepared.info["vocab_size"])
    torch.manual_seed(0)
    path = save_checkpoint(
        workdir / "ckpt",
        model=GPT(config.model),
        optimizer=None,
        state={"iter": 0, "best_val_loss": None},
        config_toml=config_to_toml(config),
        tokenizer_dir=prepared.directory / "tokenizer",
    )
    return load_for_inference(path, "cpu"), prepared.directory, prepared.info


def test_heldout_examples_are_passages_of_the_validation_split(
    dataset_and_model: tuple[LoadedModel, Path, dict[str, Any]],
) -> None:
    loaded, directory, info = dataset_and_model
    val_text = loaded.tokenizer.decode(np.fromfile(directory / "val.bin", info["dtype"]).tolist())
    examples = heldout_examples(loaded, directory, info, limit=5)
    assert len(examples) == 5
    for example in examples:
        assert example["prompt"].endswith("\n")
        assert example["target"].strip()
        assert "\n" not in example["prompt"][:-1]  # the first line is the prompt
        assert example["prompt"] + example["target"] in val_text
        tokens = loaded.tokenizer.encode(example["prompt"] + example["target"])
        assert len(tokens) <= loaded.model.block_size


@pytest.mark.skipif(HAVE_LIT, reason="lit-nlp is installed here")
def test_without_lit_the_error_says_how_to_install_it() -> None:
    with pytest.raises(MLPlaygroundError) as info:
        require_lit()
    assert str(info.value) == LIT_MISSING
    assert "ml_playground[lit]" in LIT_MISSING


@needs_lit
def test_the_lit_app_serves_generation_salience_and_loss(
    dataset_and_model: tuple[LoadedModel, Path, dict[str, Any]],
) -> None:
    from werkzeug.test import Client

    loaded, directory, info = dataset_and_model
    examples = heldout_examples(loaded, directory, info, limit=3)
    settings = GenerationSettings(max_new_tokens=8, temperature=0.0)
    client = Client(build_lit_app(loaded, examples, settings, "tiny"))

    meta = json.loads(client.get("/get_info").get_data())
    assert set(meta["models"]) == {"tiny", "_tiny_salience", "_tiny_tokenizer"}
    assert "heldout" in meta["datasets"]
    assert meta["layouts"]["ml_playground"]
    index = client.get("/")
    assert index.status_code == 200
    assert b"<html" in index.get_data().lower()

    def predict(model: str, example: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps({"inputs": [{"id": "x", "data": {**example, "_id": "x"}}]})
        response = client.post(f"/get_preds?model={model}", data=body)
        assert response.status_code == 200, response.get_data(as_text=True)[:500]
        result: dict[str, Any] = json.loads(response.get_data())[0]
        return result

    first = examples[0]
    generated = predict("tiny", first)
    expected = loaded.tokenizer.decode(
        loaded.model.generate(
            torch.tensor([loaded.tokenizer.encode(first["prompt"])]), 8, temperature=0.0
        )[0, -8:].tolist()
    )
    assert generated["response"] == expected  # greedy: the model's own continuation
    assert generated["loss"] > 0

    text_tokens = predict("_tiny_tokenizer", first)["tokens"]
    target = 6
    mask = [1.0 if i == target else 0.0 for i in range(len(text_tokens))]
    salience = predict("_tiny_salience", {**first, "target_mask": mask})
    assert salience["tokens"] == text_tokens
    assert len(salience["token_loss"]) == len(text_tokens)
    # Causality: only tokens before the target can change its loss.
    assert all(value == 0.0 for value in salience["grad_l2"][target:])
    assert all(value > 0.0 for value in salience["grad_l2"][:target])
