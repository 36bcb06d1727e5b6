"""Prompt/response JSONL through the CLI: prepare says how many tokens the loss scores, training
and `evaluate` score the responses only, and `train.train_on_prompt=true` scores everything."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cli_runner import cli, ok

pytestmark = pytest.mark.slow  # four CLI processes

EXPERIMENT = """
[data]
corpus = "jsonl"
path = "pairs.jsonl"
prompt_field = "question"
response_field = "answer"
[model]
n_layer = 1
n_head = 2
n_embd = 32
block_size = 32
[train]
batch_size = 8
max_iters = 10
eval_interval = 5
eval_iters = 2
checkpoint_interval = 5
device = "cpu"
[tracking]
tensorboard = false
"""


def test_pairs_train_and_evaluate_on_the_responses(tmp_path: Path) -> None:
    lines = [
        json.dumps({"question": f"what is {i} plus {i}?", "answer": f"{2 * i}."})
        for i in range(200)
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    (tmp_path / "qa.toml").write_text(EXPERIMENT, "utf-8")
    workdir = ("--workdir", str(tmp_path / "work"))

    prepared = ok(cli("prepare", "qa.toml", *workdir, cwd=tmp_path))
    scored = re.search(r"loss on ([\d,]+) train response tokens", prepared.stderr)
    assert scored is not None, prepared.stderr
    info = json.loads((tmp_path / "work" / "datasets" / "qa" / "dataset.json").read_text())
    assert int(scored.group(1).replace(",", "")) == info["train_response_tokens"]
    assert 0 < info["train_response_tokens"] < info["train_tokens"] / 2  # answers are short

    ok(cli("train", "qa.toml", *workdir, cwd=tmp_path))
    only = json.loads(ok(cli("evaluate", "qa.toml", "--json", *workdir, cwd=tmp_path)).stdout)
    every = json.loads(
        ok(
            cli("evaluate", "qa.toml", "train.train_on_prompt=true", "--json", *workdir,
                cwd=tmp_path)
        ).stdout
    )  # fmt: skip
    assert only["response_only"] is True
    assert every["response_only"] is False
    assert only["tokens"] == info["val_response_tokens"]
    assert every["tokens"] > only["tokens"]
