"""Data-parallel training under torchrun (gloo on the CPU) against one process.

Two ranks with `train.batch_size=2` see, together, exactly the global batch that one process
with `train.batch_size=4` sees, and DDP averages their gradients: the losses must agree at
every evaluation, and only rank 0 may write. One module-scoped workdir pair is trained once:

    W1: 1 process, batch 4, straight to iter 30
    W2: 2 processes, batch 2, to iter 20; then 2 processes resume to iter 30
    W3: a copy of W2 at iter 20, which 1 process tries to resume (and must refuse, naming
        --nproc_per_node=2)

`train.lr_decay_iters` is the same in every run, so the LR schedule does not depend on
`train.max_iters` and the stopped-and-resumed run can match the straight one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from conftest import TINY_EXPERIMENT, write_corpus
from ml_playground.config.loading import resolve_config
from ml_playground.data.prepare import prepare_dataset

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

TOLERANCE = 1e-5
DECAY = "train.lr_decay_iters=30"  # fixed in every run below
LAUNCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
Command = tuple[Sequence[str], Path]  # argv, cwd


def run_together(
    *commands: Command, timeout: float = 180
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands side by side, each in its own process group.

    Output goes to temporary files (no pipe can fill up while another command is awaited);
    whatever is still running when this returns or raises (a timeout) is killed.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ML_PLAYGROUND", "TORCHELASTIC")) and key not in LAUNCH_ENV
    }
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


def train_1(*args: str) -> list[str]:
    return [sys.executable, "-m", "ml_playground", "train", "tiny.toml", *args]


def train_2(*args: str) -> list[str]:
    """The same command under torchrun with two CPU processes (a free port via --standalone)."""
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--monitor-interval=0.1",
        "-m",
        "ml_playground",
    ]
    return [*launcher, "train", "tiny.toml", *args]


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def rows(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines]


def files_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


@dataclass(frozen=True)
class Runs:
    w1: Path
    w2: Path
    w3: Path  # a copy of W2 at iter 20, for the single-process resume attempt
    single: subprocess.CompletedProcess[str]
    ddp: subprocess.CompletedProcess[str]
    ddp_rows: list[dict[str, Any]]  # W2's metrics.jsonl before the resume
    ddp_files: list[str]  # W2's run directory before the resume
    ddp_summary: dict[str, Any]
    ddp_state: dict[str, Any]  # W2's checkpoints/last/state.json before the resume
    ddp_resume: subprocess.CompletedProcess[str]
    single_resume: subprocess.CompletedProcess[str]

    @property
    def run1(self) -> Path:
        return self.w1 / "runs" / "tiny" / "main"

    @property
    def run2(self) -> Path:
        return self.w2 / "runs" / "tiny" / "main"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("ddp")
    corpus = write_corpus(root / "corpus.txt")
    (root / "tiny.toml").write_text(
        TINY_EXPERIMENT.format(corpus=corpus.as_posix()), encoding="utf-8"
    )
    w1, w2, w3 = root / "W1", root / "W2", root / "W3"
    config = resolve_config(str(root / "tiny.toml"), [])
    prepare_dataset(config.data, w1, config.name)  # set-up, in-process
    shutil.copytree(w1 / "datasets", w2 / "datasets")  # the very same token files

    # W1 and W2 are independent: train them side by side.
    single, ddp = map(
        ok,
        run_together(
            (train_1("train.batch_size=4", "train.max_iters=30", DECAY, "--workdir", "W1"), root),
            (train_2("train.batch_size=2", "train.max_iters=20", DECAY, "--workdir", "W2"), root),
        ),
    )
    run2 = w2 / "runs" / "tiny" / "main"
    ddp_rows = rows(run2)
    ddp_files = files_under(run2)
    ddp_summary = json.loads((run2 / "summary.json").read_text("utf-8"))
    ddp_state = json.loads((run2 / "checkpoints" / "last" / "state.json").read_text("utf-8"))
    shutil.copytree(w2, w3)
    # Two processes continue W2; one process tries to continue a copy of it (and must refuse:
    # it has no RNG state to take over).
    ddp_resume, single_resume = run_together(
        (train_2("train.batch_size=2", "train.max_iters=30", DECAY, "--workdir", "W2"), root),
        (train_1("train.batch_size=4", "train.max_iters=30", DECAY, "--workdir", "W3"), root),
    )
    ok(ddp_resume)
    return Runs(
        w1=w1,
        w2=w2,
        w3=w3,
        single=single,
        ddp=ddp,
        ddp_rows=ddp_rows,
        ddp_files=ddp_files,
        ddp_summary=ddp_summary,
        ddp_state=ddp_state,
        ddp_resume=ddp_resume,
        single_resume=single_resume,
    )


def assert_same_losses(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [row["iter"] for row in got] == [row["iter"] for row in want]
    for mine, theirs in zip(got, want, strict=True):
        for key in ("train_loss", "val_loss"):
            assert mine[key] == pytest.approx(theirs[key], abs=TOLERANCE), (mine["iter"], key)
        assert mine["lr"] == pytest.approx(theirs["lr"], rel=1e-12)


def test_two_ranks_match_one_process_at_every_eval(runs: Runs) -> None:
    single_rows = rows(runs.run1)
    assert [row["iter"] for row in single_rows] == [0, 10, 20, 30]
    assert [row["iter"] for row in runs.ddp_rows] == [0, 10, 20]
    assert_same_losses(runs.ddp_rows, single_rows[:3])
    # Training moved the weights, so the match is not the trivial one of an untrained model.
    assert runs.ddp_rows[-1]["val_loss"] < runs.ddp_rows[0]["val_loss"] - 0.05


def test_only_rank_0_writes_and_reports(runs: Runs) -> None:
    # Both ranks would write the same paths, so look for doubled content, not doubled names.
    assert runs.ddp_files == files_under(runs.run1)
    assert len(runs.ddp_rows) == 3  # one metrics row per eval, not one per rank
    assert sorted(p.name for p in runs.w2.iterdir()) == ["datasets", "runs"]
    assert runs.ddp_summary["world_size"] == 2
    assert runs.ddp_summary["iters"] == 20
    assert runs.ddp_summary["status"] == "finished"
    lines = runs.ddp.stderr.splitlines()
    assert sum(line.startswith("training ") for line in lines) == 1, runs.ddp.stderr
    assert sum(line.startswith("done: 20 iters") for line in lines) == 1, runs.ddp.stderr
    assert json.loads((runs.run1 / "summary.json").read_text("utf-8"))["world_size"] == 1


def test_checkpoint_holds_every_ranks_rng_state(runs: Runs) -> None:
    state = runs.ddp_state
    assert state["iter"] == 20
    assert state["world_size"] == 2
    rng_by_rank = state["rng_by_rank"]
    assert isinstance(rng_by_rank, list)
    assert len(rng_by_rank) == 2
    assert rng_by_rank[0] == state["rng"]  # rank 0's own state, gathered
    assert rng_by_rank[0]["torch"] != rng_by_rank[1]["torch"]  # each rank its own dropout RNG


def test_two_ranks_resume_from_the_saved_iter(runs: Runs) -> None:
    assert "resumed" not in runs.ddp.stderr
    assert runs.ddp_resume.stderr.count("resumed at iter 20") == 1, runs.ddp_resume.stderr
    after = rows(runs.run2)
    assert [row["iter"] for row in after] == [0, 10, 20, 30]  # appended, no second iter 0
    assert after[:3] == runs.ddp_rows
    # Stopping at 20 and resuming under DDP reproduces the straight single-process run.
    assert_same_losses(after, rows(runs.run1))
    summary = json.loads((runs.run2 / "summary.json").read_text("utf-8"))
    assert summary["iters"] == 30
    assert summary["world_size"] == 2
    state = json.loads((runs.run2 / "checkpoints" / "last" / "state.json").read_text("utf-8"))
    assert state["iter"] == 30
    assert len(state["rng_by_rank"]) == 2


def test_one_process_refuses_a_two_process_checkpoint(runs: Runs) -> None:
    result = runs.single_resume
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "--nproc_per_node=2" in lines[0]
    assert "Traceback" not in result.stderr
    # The refused run changed nothing.
    run3 = runs.w3 / "runs" / "tiny" / "main"
    assert files_under(run3) == runs.ddp_files
    state = json.loads((run3 / "checkpoints" / "last" / "state.json").read_text("utf-8"))
    assert state == runs.ddp_state
    assert rows(run3) == runs.ddp_rows
