"""The command line as a user runs it: `python -m ml_playground ...` in a subprocess.

One module-scoped workdir is prepared and trained once (10 iterations, then resumed to 20); the
tests below read what those runs left behind, and only sampling and cheap commands run again.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli_runner import cli, ok
from conftest import TINY_EXPERIMENT, write_corpus

PROMPT = "KING."  # [sample] prompt of the tiny experiment
MAX_NEW_TOKENS = 20  # [sample] max_new_tokens of the tiny experiment


@dataclass(frozen=True)
class Trained:
    root: Path  # cwd of every command; holds tiny.toml and corpus.txt
    workdir: Path
    prepare: subprocess.CompletedProcess[str]
    first_train: subprocess.CompletedProcess[str]
    first_metrics: list[str]
    second_train: subprocess.CompletedProcess[str]

    @property
    def run_dir(self) -> Path:
        return self.workdir / "runs" / "tiny" / "main"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """prepare → train 10 iterations → train again to 20 (which must resume)."""
    root = tmp_path_factory.mktemp("cli")
    corpus = write_corpus(root / "corpus.txt")
    (root / "tiny.toml").write_text(
        TINY_EXPERIMENT.format(corpus=corpus.as_posix()), encoding="utf-8"
    )
    workdir = root / "work"
    prepare = ok(cli("prepare", "tiny.toml", "--workdir", str(workdir), cwd=root))
    first = ok(cli("train", "tiny.toml", "train.max_iters=10", "--workdir", str(workdir), cwd=root))
    metrics_file = workdir / "runs" / "tiny" / "main" / "metrics.jsonl"
    first_metrics = metrics_file.read_text("utf-8").splitlines()
    second = ok(
        cli("train", "tiny.toml", "train.max_iters=20", "--workdir", str(workdir), cwd=root)
    )
    return Trained(root, workdir, prepare, first, first_metrics, second)


def test_prepare_writes_the_dataset(trained: Trained) -> None:
    dataset = trained.workdir / "datasets" / "tiny"
    for name in ("train.bin", "val.bin", "dataset.json"):
        assert (dataset / name).is_file(), name
    assert (dataset / "tokenizer").is_dir()
    info = json.loads((dataset / "dataset.json").read_text("utf-8"))
    assert info["train_tokens"] > info["val_tokens"] > 0
    assert "prepared" in trained.prepare.stderr
    # Nothing is written outside --workdir.
    assert sorted(p.name for p in trained.root.iterdir()) == ["corpus.txt", "tiny.toml", "work"]


def test_train_writes_the_run_directory(trained: Trained) -> None:
    run = trained.run_dir
    for name in ("summary.json", "metrics.jsonl", "config.toml"):
        assert (run / name).is_file(), name
    for kind in ("last", "best"):
        assert (run / "checkpoints" / kind).is_dir(), kind
        assert (run / "checkpoints" / kind / "model.safetensors").is_file()
    saved = tomllib.loads((run / "config.toml").read_text("utf-8"))
    assert saved["name"] == "tiny"
    assert saved["train"]["max_iters"] == 20
    assert saved["model"]["vocab_size"] > 0  # filled in from the tokenizer
    assert "Traceback" not in trained.first_train.stderr + trained.second_train.stderr


def test_second_train_resumes_where_the_first_stopped(trained: Trained) -> None:
    assert "resumed" not in trained.first_train.stderr
    assert "resumed at iter 10" in trained.second_train.stderr
    rows = [
        json.loads(line)
        for line in (trained.run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    ]
    assert [row["iter"] for row in rows] == [0, 10, 20]  # no second iter-0 evaluation
    # The first run's rows are kept as they were; the second run only appended.
    assert [json.dumps(row) for row in rows[: len(trained.first_metrics)]] == [
        json.dumps(json.loads(line)) for line in trained.first_metrics
    ]
    summary = json.loads((trained.run_dir / "summary.json").read_text("utf-8"))
    assert summary["iters"] == 20
    assert summary["best_iter"] in (10, 20)
    # The iter-0 evaluation is a baseline, not a candidate for `best`.
    assert summary["best_val_loss"] == min(row["val_loss"] for row in rows if row["iter"] > 0)
    state = json.loads((trained.run_dir / "checkpoints" / "last" / "state.json").read_text("utf-8"))
    assert state["iter"] == 20


def test_sample_streams_the_prompt_and_its_continuation(trained: Trained) -> None:
    result = ok(cli("sample", "tiny.toml", "--workdir", str(trained.workdir), cwd=trained.root))
    assert result.stdout.startswith(PROMPT)
    # A character tokenizer: one character per new token, then a newline.
    assert len(result.stdout) == len(PROMPT) + MAX_NEW_TOKENS + 1
    assert result.stdout.endswith("\n")
    assert "sampling from" in result.stderr


def test_greedy_json_sampling_is_deterministic(trained: Trained) -> None:
    def greedy(seed: str) -> dict[str, list[str]]:
        result = ok(
            cli(
                "sample",
                "tiny.toml",
                "--json",
                "--temperature",
                "0",
                "--seed",
                seed,
                "--workdir",
                str(trained.workdir),
                cwd=trained.root,
            )
        )
        payload: dict[str, list[str]] = json.loads(result.stdout)
        return payload

    first, second = greedy("1"), greedy("2")
    assert list(first) == ["samples"]
    assert len(first["samples"]) == 1
    assert first["samples"][0].startswith(PROMPT)
    assert len(first["samples"][0]) == len(PROMPT) + MAX_NEW_TOKENS
    assert first == second  # greedy: the seed does not matter


def test_misspelled_key_is_one_clear_line_and_exit_2(trained: Trained) -> None:
    result = cli(
        "train",
        "tiny.toml",
        "train.max_iter=5",
        "--workdir",
        str(trained.workdir),
        cwd=trained.root,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "train.max_iter" in lines[0]
    assert "did you mean 'train.max_iters'" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_train_before_prepare_names_the_prepare_command(
    tmp_path: Path, tiny_experiment: Path
) -> None:
    result = cli("train", str(tiny_experiment), "--workdir", str(tmp_path / "empty"), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "ml-playground prepare tiny" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "empty" / "runs").exists()


def test_config_show_prints_the_resolved_config_as_toml(trained: Trained) -> None:
    result = ok(cli("config", "show", "tiny.toml", "model.n_embd=64", cwd=trained.root))
    config = tomllib.loads(result.stdout)
    assert config["name"] == "tiny"
    assert config["model"]["n_embd"] == 64
    assert config["model"]["n_layer"] == 2  # from the TOML file
    assert config["train"]["learning_rate"] == pytest.approx(1e-3)  # a package default


def test_experiments_list_shows_the_bundled_preset(tmp_path: Path) -> None:
    result = ok(cli("experiments", "list", cwd=tmp_path))
    assert "shakespeare_char" in result.stdout


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = ok(cli("--help", cwd=tmp_path))
    for command in ("prepare", "train", "sample", "loop", "config", "experiments"):
        assert command in result.stdout
