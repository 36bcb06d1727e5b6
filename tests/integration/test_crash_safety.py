"""Crash safety of `train`, with real processes and real signals.

- SIGKILL, which nothing can catch, lands at seeded random moments of a run that saves
  `checkpoints/last` after every step; after each kill the checkpoint must open, its weights
  must load into a GPT built from its own config, and its optimizer state must load with
  `weights_only=True`. Each restart must resume from exactly that checkpoint.
- The same guarantee without timing luck: the intermediate states `fsutil.replace_dir` can
  leave on disk are built by hand, and the next `train` must resume from them and finish.
- SIGINT and SIGTERM finish the current step, save `last` and exit 130 with one line and no
  traceback; the same command then resumes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
import torch

from conftest import TINY_EXPERIMENT, write_corpus
from ml_playground.config.loading import resolve_config
from ml_playground.data.prepare import prepare_dataset
from ml_playground.model.gpt import GPT
from ml_playground.train.checkpoint import load_optimizer, load_weights, open_checkpoint
from ml_playground.train.loop import train
from ml_playground.train.optim import build_optimizer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WORKDIR = "work"
LAST = Path(WORKDIR) / "runs" / "tiny" / "main" / "checkpoints" / "last"
KILL_ROUNDS = 3
KILL_SEED = 20240607


def env() -> dict[str, str]:
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("ML_PLAYGROUND") and key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")
    }
    clean.update(
        {"COLUMNS": "200", "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    )
    return clean


def train_args(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "ml_playground", "train", "tiny.toml", *overrides]


def popen(args: Sequence[str], cwd: Path, stderr: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start `args --workdir work` in `cwd`, in its own session (so it can be killed whole)."""
    return subprocess.Popen(
        [*args, "--workdir", WORKDIR],
        cwd=cwd,
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@contextmanager
def started(args: Sequence[str], cwd: Path, stderr: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A background process, stderr to a file; killed on the way out if still running."""
    with stderr.open("wb") as err:
        proc = popen(args, cwd, err)
        try:
            yield proc
        finally:
            stop(proc)


def run_together(*commands: tuple[Sequence[str], Path]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands side by side; output via temporary files; none outlives this."""
    deadline = time.monotonic() + 180
    with ExitStack() as stack:
        procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
        try:
            for args, cwd in commands:
                err = stack.enter_context(tempfile.TemporaryFile())
                procs.append((popen(args, cwd, err), err))
            results = []
            for (proc, err), (args, _) in zip(procs, commands, strict=True):
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                err.seek(0)
                stderr = err.read().decode("utf-8")
                results.append(subprocess.CompletedProcess(list(args), proc.returncode, "", stderr))
            return results
        finally:
            for proc, _ in procs:
                stop(proc)


def saved_iter(last: Path) -> int | None:
    """The iteration `last` holds, or None while it is absent, mid-rename or mid-write."""
    try:
        return int(json.loads((last / "state.json").read_text("utf-8"))["iter"])
    except (OSError, ValueError, KeyError):
        return None


def saved_past(last: Path, iteration: int) -> Callable[[], bool]:
    return lambda: (saved_iter(last) or 0) > iteration


def wait_for(
    condition: Callable[[], bool], proc: subprocess.Popen[bytes], stderr: Path, timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}):\n{stderr.read_text('utf-8')}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for training progress:\n{stderr.read_text('utf-8')}")
        time.sleep(0.01)


def assert_loadable(directory: Path, with_optimizer: bool = True) -> dict[str, Any]:
    """Open a checkpoint and load everything in it into real objects; return its state."""
    checkpoint = open_checkpoint(directory)
    model = GPT(checkpoint.config.model)
    load_weights(checkpoint, model)
    if with_optimizer:
        tensors = torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True)
        assert tensors["state"], "optimizer.pt holds no per-parameter state"
        optimizer = build_optimizer(model, checkpoint.config.train, torch.device("cpu"))
        load_optimizer(checkpoint, optimizer)
    return checkpoint.state


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny.toml, its corpus and the prepared dataset (set up in-process), for tests to copy."""
    root = tmp_path_factory.mktemp("prepared")
    corpus = write_corpus(root / "corpus.txt")
    (root / "tiny.toml").write_text(
        TINY_EXPERIMENT.format(corpus=corpus.as_posix()), encoding="utf-8"
    )
    config = resolve_config(str(root / "tiny.toml"), [])
    prepare_dataset(config.data, root / WORKDIR, config.name)
    return root


def copy_of(template: Path, destination: Path) -> Path:
    shutil.copytree(template, destination)
    return destination


# --- SIGKILL at random moments ------------------------------------------------------------------
def test_sigkill_during_saves_always_leaves_a_loadable_checkpoint(
    prepared: Path, tmp_path: Path
) -> None:
    root = copy_of(prepared, tmp_path / "root")
    last = root / LAST
    best = last.with_name("best")
    args = train_args("train.max_iters=100000", "train.checkpoint_interval=1")
    delays = random.Random(KILL_SEED)
    previous = 0
    for round_no in range(KILL_ROUNDS):
        stderr = tmp_path / f"stderr-{round_no}.txt"
        with started(args, root, stderr) as proc:
            # Training is under way once `last` moves past what the previous round left.
            wait_for(saved_past(last, previous), proc, stderr, timeout=120)
            time.sleep(delays.uniform(0.0, 0.15))
            os.killpg(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        log = stderr.read_text("utf-8")
        if round_no == 0:
            assert "resumed" not in log, log
        else:
            assert f"resumed at iter {previous} " in log, log
        state = assert_loadable(last)
        assert state["iter"] > previous, (round_no, state["iter"], previous)
        if best.exists() or best.with_name(".best.old").exists():
            assert_loadable(best, with_optimizer=False)
        previous = int(state["iter"])


# --- intermediate states of replace_dir, built by hand ------------------------------------------
def staging_half_written(last: Path) -> None:
    """Killed while writing the new checkpoint: `.last.staging` is incomplete, `last` intact."""
    staging = last.with_name(".last.staging")
    staging.mkdir()
    weights = (last / "model.safetensors").read_bytes()
    (staging / "model.safetensors").write_bytes(weights[: len(weights) // 2])


def between_the_renames(last: Path) -> None:
    """Killed between `last → .last.old` and `.last.staging → last`: no `last` at all."""
    staging = last.with_name(".last.staging")
    shutil.copytree(last, staging)
    state = json.loads((staging / "state.json").read_text("utf-8"))
    state["iter"] = 15  # the newer checkpoint that was about to take `last`'s place
    (staging / "state.json").write_text(json.dumps(state), "utf-8")
    os.replace(last, last.with_name(".last.old"))


def removing_the_old_copy(last: Path) -> None:
    """Killed while deleting `.last.old` after both renames: a partial `.last.old` remains."""
    old = last.with_name(".last.old")
    shutil.copytree(last, old)
    for name in ("model.safetensors", "state.json", "config.toml"):
        (old / name).unlink()


CRASHES = {
    crash.__name__: crash
    for crash in (staging_half_written, between_the_renames, removing_the_old_copy)
}
RESUME = ("train.max_iters=20", "train.lr_decay_iters=20")


@pytest.fixture(scope="module")
def resumed_after_crash(
    prepared: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """Train to iter 10 (in-process); damage one copy per crash state; resume all side by side."""
    base = copy_of(prepared, tmp_path_factory.mktemp("trained") / "root")
    config = resolve_config(str(base / "tiny.toml"), ["train.max_iters=10", *RESUME[1:]])
    train(config, base / WORKDIR)
    assert saved_iter(base / LAST) == 10
    roots = {}
    for name, crash in CRASHES.items():
        roots[name] = copy_of(base, tmp_path_factory.mktemp(name) / "root")
        crash(roots[name] / LAST)
    results = run_together(*((train_args(*RESUME), root) for root in roots.values()))
    return {name: (roots[name], result) for name, result in zip(roots, results, strict=True)}


@pytest.mark.parametrize("crash", list(CRASHES))
def test_resume_after_a_crash_inside_replace_dir(
    resumed_after_crash: dict[str, tuple[Path, subprocess.CompletedProcess[str]]], crash: str
) -> None:
    root, result = resumed_after_crash[crash]
    last = root / LAST
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "resumed at iter 10 " in result.stderr  # the last complete checkpoint
    summary = json.loads((last.parent.parent / "summary.json").read_text("utf-8"))
    assert summary["iters"] == 20
    assert assert_loadable(last)["iter"] == 20
    leftovers = sorted(p.name for p in last.parent.iterdir() if p.name.startswith("."))
    assert leftovers == []


# --- SIGINT / SIGTERM ---------------------------------------------------------------------------
def test_sigint_and_sigterm_save_exit_130_and_resume(prepared: Path, tmp_path: Path) -> None:
    """SIGINT a run, SIGTERM its resumption, then let the same command finish."""
    root = copy_of(prepared, tmp_path / "root")
    last = root / LAST
    max_iters = 100
    args = train_args(
        f"train.max_iters={max_iters}", "train.checkpoint_interval=10", "train.eval_interval=50"
    )
    stopped_at: list[int] = []

    for number, signum in enumerate((signal.SIGINT, signal.SIGTERM)):
        stderr = tmp_path / f"stderr-{signum.name}.txt"
        before = stopped_at[-1] if stopped_at else 0
        with started(args, root, stderr) as proc:
            # A checkpoint newer than the last one means the loop (and its handler) is running.
            wait_for(saved_past(last, before), proc, stderr)
            proc.send_signal(signum)
            assert proc.wait(timeout=60) == 130, stderr.read_text("utf-8")
        log = stderr.read_text("utf-8")
        assert "Traceback" not in log, log
        assert "interrupted" in log, log
        if number:
            assert f"resumed at iter {before} " in log, log
        state = json.loads((last / "state.json").read_text("utf-8"))
        assert before < state["iter"] < max_iters
        assert f"interrupted at iter {state['iter']}" in log, log
        assert_loadable(last)
        assert not (last.parent.parent / "summary.json").exists()
        stopped_at.append(int(state["iter"]))

    (result,) = run_together((args, root))
    assert result.returncode == 0, result.stderr
    assert f"resumed at iter {stopped_at[-1]} " in result.stderr
    summary = json.loads((last.parent.parent / "summary.json").read_text("utf-8"))
    assert summary["iters"] == max_iters
    assert summary["status"] == "finished"
