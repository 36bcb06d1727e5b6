"""`evaluate`, `runs plot` and `analyze` as a user runs them, on one tiny trained run.

The module prepares and trains once (20 iterations, a sample every 10); the tests read what
that left behind and run the analysis commands against it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli_runner import cli, cli_env, ok
from conftest import TINY_EXPERIMENT, write_corpus

pytestmark = pytest.mark.slow  # a training run, then a model load per command

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Run:
    root: Path
    workdir: Path

    @property
    def run_dir(self) -> Path:
        return self.workdir / "runs" / "tiny" / "main"

    @property
    def dataset(self) -> dict[str, object]:
        info: dict[str, object] = json.loads(
            (self.workdir / "datasets" / "tiny" / "dataset.json").read_text("utf-8")
        )
        return info

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return cli(*args, "--workdir", str(self.workdir), cwd=self.root, timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("evaluate")
    corpus = write_corpus(root / "corpus.txt")
    (root / "tiny.toml").write_text(
        TINY_EXPERIMENT.format(corpus=corpus.as_posix()), encoding="utf-8"
    )
    trained = Run(root, root / "work")
    ok(trained.cli("prepare", "tiny.toml"))
    ok(trained.cli("train", "tiny.toml", "train.sample_interval=10"))
    return trained


def test_training_samples_come_with_quality_metrics(run: Run) -> None:
    samples = run.run_dir / "samples"
    for step in (10, 20):
        metrics = json.loads((samples / f"iter_{step:07d}.metrics.json").read_text("utf-8"))
        assert 0.0 <= metrics["distinct_1"] <= 1.0
        assert 0.0 <= metrics["copied_ngram_fraction"] <= 1.0
        assert metrics["copied_ngram_tokens"] == 32  # char model, ASCII corpus


def test_evaluate_scores_every_validation_token(run: Run) -> None:
    result = ok(run.cli("evaluate", "tiny.toml", "--json"))
    report = json.loads(result.stdout)
    info = run.dataset
    assert report["evaluated"] == "val"
    assert report["tokens"] == info["val_tokens"]
    assert report["bytes"] == info["val_bytes"]
    assert report["checkpoint"].endswith(os.path.join("checkpoints", "best"))
    assert report["iter"] == 20
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    total_bits = report["loss"] * report["tokens"] / math.log(2)
    assert report["bits_per_byte"] == pytest.approx(total_bits / report["bytes"])
    # A trained model beats the uniform distribution over the characters.
    assert report["bits_per_token"] < math.log2(int(str(info["vocab_size"])))
    saved = json.loads((run.run_dir / "eval.json").read_text("utf-8"))
    assert saved == {key: value for key, value in report.items() if key != "path"}

    again = json.loads(ok(run.cli("evaluate", "tiny.toml", "--json")).stdout)
    assert again["loss"] == report["loss"]  # deterministic: no random batches


def test_evaluate_prints_a_table(run: Run) -> None:
    result = ok(run.cli("evaluate", "tiny.toml", "--split", "train", "--checkpoint", "last"))
    assert re.search(r"bits per byte\s+│\s+\d+\.\d{4}", result.stdout)
    assert "perplexity" in result.stdout
    assert "train" in result.stdout
    assert "eval.json" in result.stderr
    assert json.loads((run.run_dir / "eval.json").read_text("utf-8"))["evaluated"] == "train"


def test_evaluate_a_text_file_with_samples(run: Run) -> None:
    other = write_corpus(run.root / "other.txt", n_lines=40, seed=7)
    result = ok(run.cli("evaluate", "tiny.toml", "--data", str(other), "--samples", "2", "--json"))
    report = json.loads(result.stdout)
    assert report["evaluated"] == f"file:{other}"
    assert report["bytes"] == len(other.read_text("utf-8").encode())
    assert report["tokens"] == report["bytes"]  # char model, ASCII text: one token per byte
    samples = report["samples"]
    assert samples["count"] == 2
    assert len(samples["texts"]) == 2
    assert len(samples["per_sample"]) == 2
    for key in ("distinct_1", "distinct_2", "distinct_3", "repetition_rate"):
        assert 0.0 <= samples["mean"][key] <= 1.0
    assert samples["mean"]["tokens"] == 20  # [sample] max_new_tokens of the tiny experiment
    assert "copied_ngram_fraction" in samples["mean"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--split", "test"), "--split must be val or train"),
        (("--checkpoint", "nowhere/ckpt"), "no checkpoint at nowhere"),
        (("--stride", "999"), "--stride must be between 1 and block_size=32"),
        (("--max-tokens", "5", "--data", "tiny.toml"), "--max-tokens applies to prepared splits"),
    ],
)
def test_evaluate_user_errors_exit_2_with_one_line(
    run: Run, args: tuple[str, ...], message: str
) -> None:
    result = run.cli("evaluate", "tiny.toml", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_runs_plot_writes_a_png(run: Run) -> None:
    out = run.root / "plots" / "loss.png"
    result = ok(run.cli("runs", "plot", "tiny.toml", "--out", str(out)))
    assert str(out) in result.stderr
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000
    ok(run.cli("runs", "plot", "tiny.toml", "main", "--metric", "val_loss"))
    assert (run.workdir / "runs" / "tiny" / "loss.png").read_bytes()[:8] == PNG_SIGNATURE
    missing = run.cli("runs", "plot", "tiny.toml", "nosuch")
    assert missing.returncode == 2
    assert "no run nosuch" in missing.stderr
    assert "runs there: main" in missing.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("lit_nlp") is not None, reason="lit-nlp is installed here"
)
def test_analyze_without_lit_says_how_to_install_it(run: Run) -> None:
    result = run.cli("analyze", "tiny.toml")
    assert result.returncode == 2
    assert "pip install 'ml_playground[lit]'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("lit_nlp") is None,
    reason="lit-nlp is not installed (extra `lit`; it pins numpy<2, so it lives in its own venv)",
)
def test_analyze_serves_lit_on_localhost(run: Run) -> None:
    command = [sys.executable, "-m", "ml_playground", "analyze", "tiny.toml", "--port", "0"]
    command += ["--workdir", str(run.workdir), "--examples", "5", "sample.max_new_tokens=5"]
    server = subprocess.Popen(
        command, cwd=run.root, env=cli_env(), stderr=subprocess.PIPE, text=True, encoding="utf-8"
    )
    try:
        url = _wait_for_url(server, timeout=120)
        with urllib.request.urlopen(url, timeout=30) as page:
            assert page.status == 200
            assert b"<html" in page.read().lower()
        with urllib.request.urlopen(url + "get_info", timeout=30) as response:
            info = json.loads(response.read())
        assert set(info["models"]) == {"tiny", "_tiny_salience", "_tiny_tokenizer"}
        assert url.startswith("http://127.0.0.1:")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stderr is not None:
            server.stderr.close()


def _wait_for_url(server: subprocess.Popen[str], timeout: float) -> str:
    """The URL from the `LIT on http://...` line the command prints once it listens."""
    assert server.stderr is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(
                f"analyze exited {server.returncode}:\n{''.join(seen)}{server.stderr.read()}"
            )
        ready, _, _ = select.select([server.stderr], [], [], 1.0)
        if not ready:
            continue
        line = server.stderr.readline()
        seen.append(line)
        match = re.search(r"LIT on (http://\S+/)", line)
        if match:
            return match.group(1)
    pytest.fail(f"no `LIT on` line within {timeout} s:\n{''.join(seen)}")
