"""Prompt/response pairs train on the response tokens only (train.train_on_prompt=false, the
default): validation scores the same tokens, and `train_on_prompt=true` scores every token."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_EXPERIMENT, write_corpus
from ml_playground.analysis.evaluate import evaluate_run
from ml_playground.config.loading import resolve_config
from ml_playground.config.schema import ExperimentConfig, ModelConfig
from ml_playground.data.loader import IGNORE_INDEX, TokenBatches
from ml_playground.data.prepare import mask_files, prepare_dataset, split_files
from ml_playground.errors import DataError
from ml_playground.model.gpt import GPT
from ml_playground.train.device import Precision
from ml_playground.train.loop import estimate_loss, seed_everything, train, with_vocab_size

MakeConfig = Callable[..., ExperimentConfig]
FP32 = Precision(torch.device("cpu"), torch.float32)


def write_pairs(path: Path, count: int = 200) -> Path:
    """Random letters as prompts (nothing to learn but their frequencies), one fixed response
    (easy to learn): the two halves of the loss move very differently."""
    rng = random.Random(0)
    lines = []
    for _ in range(count):
        prompt = "".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(6, 10)))
        lines.append(json.dumps({"q": prompt, "a": "=0123456789"}) + "\n")
    path.write_text("".join(lines), "utf-8")
    return path


def pairs_overrides(path: Path) -> tuple[str, ...]:
    return (
        "data.corpus='jsonl'",
        f"data.path='{path.as_posix()}'",
        "data.prompt_field='q'",
        "data.response_field='a'",
    )


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_estimate_loss_is_the_mean_over_scored_targets(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    config = make_config(*pairs_overrides(write_pairs(tmp_path / "pairs.jsonl")))
    result = prepare_dataset(config.data, tmp_path / "work", config.name)
    files = split_files(result.directory, result.info, "val")
    masks = mask_files(result.directory, result.info, "val")
    batches = TokenBatches(files, result.info["dtype"], 32, 4, FP32.device, seed=0, mask=masks)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=40))
    loss = estimate_loss(model, {"val": batches}, 3, FP32, seed=7)["val"]
    # By hand: the same three batches, every scored target's loss, one mean.
    batches.generator.manual_seed(7)
    losses = []
    with torch.no_grad():
        for _ in range(3):
            x, y = batches.next_batch()
            logits, _ = model(x, y)
            scored = y != IGNORE_INDEX
            per_token = F.cross_entropy(logits.transpose(1, 2), y.clamp(min=0), reduction="none")
            losses.append(per_token[scored])
    assert loss == pytest.approx(float(torch.cat(losses).mean()), rel=1e-5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[ExperimentConfig, Path]]:
    """The same pairs trained response-only (the default) and with train_on_prompt=true."""
    root = tmp_path_factory.mktemp("response_only")
    experiment = root / "tiny.toml"
    experiment.write_text(
        TINY_EXPERIMENT.format(corpus=write_corpus(root / "c.txt").as_posix()), "utf-8"
    )
    data = pairs_overrides(write_pairs(root / "pairs.jsonl"))
    fast = ("train.max_iters=60", "train.eval_interval=30", "train.learning_rate=1e-2")
    out = {}
    for name, extra in (("response", ()), ("all", ("train.train_on_prompt=true",))):
        config = resolve_config(str(experiment), [*data, *fast, *extra])
        workdir = root / name
        prepare_dataset(config.data, workdir, config.name)
        train(config, workdir)
        out[name] = (config, workdir)
    return out


def prompt_and_response_loss(config: ExperimentConfig, workdir: Path) -> tuple[float, float]:
    """(mean loss on prompt tokens, on response tokens) of the run's last checkpoint on val."""

    def evaluate(train_on_prompt: bool) -> dict[str, Any]:
        setting = config.train.model_copy(update={"train_on_prompt": train_on_prompt})
        scoring = config.model_copy(update={"train": setting})
        return evaluate_run(scoring, workdir, checkpoint="last", say=lambda _: None)

    response, everything = evaluate(False), evaluate(True)
    assert response["response_only"]
    assert not everything["response_only"]
    prompt_tokens = everything["tokens"] - response["tokens"]
    prompt_sum = everything["loss"] * everything["tokens"] - response["loss"] * response["tokens"]
    return prompt_sum / prompt_tokens, response["loss"]


def test_response_only_training_learns_the_response_not_the_prompt(
    runs: dict[str, tuple[ExperimentConfig, Path]],
) -> None:
    response_prompt, response_response = prompt_and_response_loss(*runs["response"])
    all_prompt, all_response = prompt_and_response_loss(*runs["all"])
    # Both learn the fixed response ...
    assert response_response < 0.2
    assert all_response < 0.5
    # ... but only train_on_prompt learns the prompts' letters (log 16 = 2.77 at best); trained
    # on responses alone the model unlearns them (a prompt letter never was a target).
    assert all_prompt < 3.0
    assert response_prompt > all_prompt + 1.5


def test_validation_scores_what_training_scores(
    runs: dict[str, tuple[ExperimentConfig, Path]],
) -> None:
    response_rows = metrics(runs["response"][1] / "runs" / "tiny" / "main")
    all_rows = metrics(runs["all"][1] / "runs" / "tiny" / "main")
    assert [row["iter"] for row in response_rows] == [0, 30, 60]
    # Response-only: the fixed response is learned, so the validation loss collapses.
    assert response_rows[-1]["val_loss"] < 0.1 * response_rows[0]["val_loss"]
    assert all_rows[-1]["val_loss"] > 0.3 * all_rows[0]["val_loss"]  # the prompts stay random


def test_a_dataset_without_masks_asks_for_prepare(make_config: MakeConfig, tmp_path: Path) -> None:
    config = make_config(
        *pairs_overrides(write_pairs(tmp_path / "pairs.jsonl")), "train.max_iters=1"
    )
    result = prepare_dataset(config.data, tmp_path, config.name)
    info_path = result.directory / "dataset.json"
    info = json.loads(info_path.read_text("utf-8"))
    del info["loss_mask"]  # as a version before loss masks wrote it
    info_path.write_text(json.dumps(info), "utf-8")
    with pytest.raises(
        DataError, match=r"ml-playground prepare tiny` again .*train_on_prompt=true"
    ):
        train(config, tmp_path)
    on_prompt = make_config(
        *pairs_overrides(tmp_path / "pairs.jsonl"),
        "train.max_iters=1",
        "train.train_on_prompt=true",
    )
    assert train(on_prompt, tmp_path).summary["iters"] == 1


@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_the_loop_scores_what_the_switch_says(
    make_config: MakeConfig, tmp_path: Path, train_on_prompt: bool
) -> None:
    """The iteration-0 validation loss is estimate_loss over masked batches (the default) or
    over every target (train_on_prompt=true: the behaviour before loss masks)."""
    config = make_config(
        *pairs_overrides(write_pairs(tmp_path / "pairs.jsonl")),
        "train.max_iters=1",
        f"train.train_on_prompt={str(train_on_prompt).lower()}",
    )
    result = prepare_dataset(config.data, tmp_path, config.name)
    logged = metrics(train(config, tmp_path).run_dir)[0]
    assert logged["iter"] == 0
    seed_everything(config.train.seed)  # the loop's initial weights
    model = GPT(with_vocab_size(config, result.info["vocab_size"]).model)
    files = split_files(result.directory, result.info, "val")
    masks = mask_files(result.directory, result.info, "val")
    assert masks is not None

    def val_loss(mask: list[Path] | None) -> float:
        batches = TokenBatches(
            files,
            result.info["dtype"],
            config.model.block_size,
            config.train.batch_size,
            FP32.device,
            seed=config.train.seed + 2,
            mask=mask,
        )
        splits = {"val": batches}
        return estimate_loss(model, splits, config.train.eval_iters, FP32, config.train.seed)["val"]

    scored, unscored = (val_loss(None), val_loss(masks))[:: 1 if train_on_prompt else -1]
    assert logged["val_loss"] == pytest.approx(scored, rel=1e-6)
    assert logged["val_loss"] != pytest.approx(unscored, rel=1e-3)
