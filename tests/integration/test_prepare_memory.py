"""Preparing a corpus much bigger than the memory it may use: RSS must not grow with its size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CORPUS_MB = 48
# What a whole-corpus-in-memory prepare would need on top of the interpreter: the text as a
# Python str (2 bytes/char here, the € forces UCS-2) plus a list of token ids (8+ bytes each).
HEADROOM_MB = 160


def write_big_corpus(folder: Path, megabytes: int) -> int:
    folder.mkdir(parents=True)
    line = "Die Größe der Aufgabe: 42 € für Bürgerinnen und Bürger, Straße {n}.\n"
    block = "".join(line.format(n=n) for n in range(2000)).encode("utf-8")
    written = 0
    for index in range(megabytes * 1_000_000 // len(block) // 50 + 1):
        (folder / f"teil_{index:04d}.txt").write_bytes(block * 50)
        written += len(block) * 50
    return written


def peak_rss_mb(args: list[str], cwd: Path) -> float:
    """Peak RSS of a fresh child process (ru_maxrss of the children that finished so far)."""
    code = (
        "import resource, subprocess, sys\n"
        "proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "if proc.returncode: sys.exit(proc.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=300,
    ).stdout
    return int(out.strip()) / 1024


@pytest.mark.slow
def test_prepare_memory_does_not_grow_with_the_corpus(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    size = write_big_corpus(corpus, CORPUS_MB)
    assert size > 40_000_000
    baseline = peak_rss_mb([sys.executable, "-c", "import ml_playground.cli.app"], tmp_path)
    peak = peak_rss_mb(
        [
            sys.executable,
            "-m",
            "ml_playground",
            "prepare",
            "textdir_char",
            f"data.path={corpus.as_posix()}",
            "data.num_workers=1",
            "--workdir",
            str(tmp_path / "work"),
        ],
        tmp_path,
    )
    tokens = (tmp_path / "work" / "datasets" / "textdir_char" / "train.bin").stat().st_size // 2
    assert tokens > 30_000_000
    assert peak - baseline < HEADROOM_MB, f"prepare used {peak - baseline:.0f} MB over baseline"
