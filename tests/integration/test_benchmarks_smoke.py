"""The performance benchmarks start and measure, run as a user runs them (tiny sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_corpus

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("script", ["bench_throughput.py", "bench_time_to_loss.py", "bench_cpu.py"])
def test_help_runs(script: str) -> None:
    done = run(str(BENCH / script), "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


@pytest.mark.slow
def test_throughput_tiny_run_prints_one_table() -> None:
    done = run(
        str(BENCH / "bench_throughput.py"),
        "--tiny",
        "--device",
        "cpu",
        "--compile-mode",
        "off",
        "--batches",
        "2,4",
        "--steps",
        "2",
        "--repeats",
        "2",
        "--warmup",
        "1",
    )
    assert done.returncode == 0, done.stderr
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 3  # header + one row per batch
    assert table[1].startswith("| 2 | off |")
    tokens_per_s = table[2].split("|")[4].strip()
    assert tokens_per_s.endswith("k")


@pytest.mark.slow
def test_time_to_loss_rows_run_in_child_processes(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "rows.json"
    done = run(
        str(BENCH / "bench_cpu.py"),
        "--rows",
        "nanogpt,ours",
        "--data",
        str(corpus),
        "--workdir",
        str(tmp_path / "work"),
        "--target",
        "9.0",
        "--json-out",
        str(out),
        "train.max_iters=4",
        "train.eval_interval=2",
        "train.eval_iters=1",
        "train.lr_decay_iters=4",
        "train.warmup_iters=1",
        "model.n_layer=1",
        "model.n_embd=32",
        "model.n_head=2",
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text("utf-8"))
    assert [row["row"] for row in rows] == ["nanogpt", "ours"]
    for row in rows:
        # The first evaluation after training starts is under 9 (log(vocab) is about 3.4);
        # the untrained model's evaluation at iter 0 does not count.
        assert row["target_iter"] == 2
        assert row["iters"] == 2  # and the run stopped there
        assert row["target_s"] <= row["wall_s"]
    assert "muon" in " ".join(rows[1]["overrides"])
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 3  # header + one row each


def test_missing_corpus_is_one_clear_line(tmp_path: Path) -> None:
    done = run(str(BENCH / "bench_time_to_loss.py"), "--data", str(tmp_path / "absent.txt"))
    assert done.returncode == 2
    assert "not found" in done.stderr
    assert "--data" in done.stderr
    assert "Traceback" not in done.stderr
