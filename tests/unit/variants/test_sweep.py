"""Sweep planning, parsing and orchestration (skip, failure isolation, report, MLflow parent).

The executor is the seam: `RecordingExecutor` stands in for the training process and writes
what `ml-playground train` writes (summary.json, metrics.jsonl) with losses the test chooses.
The real process path is covered by tests/e2e/test_sweep_cli.py.
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest

from conftest import write_corpus
from ml_playground.errors import ConfigError
from ml_playground.variants.executors import LocalExecutor, TrainTask, make_executor
from ml_playground.variants.sweep import (
    Distribution,
    parse_grid,
    parse_random,
    plan_sweep,
    run_sweep,
    split_top_level,
    toml_literal,
)

TINY = """
[data]
corpus = "file"
path = "{corpus}"
[model]
n_layer = 2
n_head = 2
n_embd = 32
block_size = 16
[train]
max_iters = 10
"""


@pytest.fixture
def experiment_file(tmp_path: Path) -> Path:
    corpus = write_corpus(tmp_path / "corpus.txt", n_lines=50)
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(corpus=corpus.as_posix()))
    return path


def _override(task: TrainTask, key: str) -> str | None:
    for item in task.overrides:
        if item.startswith(f"{key}="):
            return item.partition("=")[2]
    return None


class RecordingExecutor:
    """Writes a finished run's files; val loss = lr * 100 + seed / 1000; lr=0.5 crashes."""

    name = "recording"

    def __init__(self) -> None:
        self.tasks: list[TrainTask] = []
        self.lock = threading.Lock()

    def run(self, task: TrainTask) -> int:
        with self.lock:
            self.tasks.append(task)
        lr = float(_override(task, "train.learning_rate") or 0.001)
        if lr == 0.5:
            task.log_path.parent.mkdir(parents=True, exist_ok=True)
            task.log_path.write_text("Traceback ...\nRuntimeError: diverged\n")
            return 1
        seed = int(_override(task, "train.seed") or 0)
        run_name = json.loads(_override(task, "train.run_name") or '"x"')
        run_dir = task.workdir / "runs" / "tiny" / run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        best = lr * 100 + seed / 1000
        rows = [{"iter": 0, "val_loss": 3.0}, {"iter": 10, "val_loss": best}]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary = {"best_val_loss": best, "best_iter": 10, "iters": 10, "wall_s": 1.0}
        (run_dir / "summary.json").write_text(json.dumps(summary | {"tokens_per_s": 100.0}))
        return 0

    def close(self) -> None:
        return None


def test_split_top_level_respects_brackets_and_quotes() -> None:
    assert split_top_level("1,2") == ["1", "2"]
    assert split_top_level('[1,2],[3,4],"a,b"') == ["[1,2]", "[3,4]", '"a,b"']


def test_parse_grid_reads_toml_literals() -> None:
    assert parse_grid("train.learning_rate=1e-3,3e-4") == ("train.learning_rate", [1e-3, 3e-4])
    assert parse_grid("train.compile=true,false") == ("train.compile", [True, False])
    assert parse_grid('sample.stop=["a","b"],[]') == ("sample.stop", [["a", "b"], []])
    with pytest.raises(ConfigError, match="KEY=VALUES"):
        parse_grid("train.learning_rate")
    with pytest.raises(ConfigError, match="twice"):
        parse_grid("model.n_layer=2,2")


def test_toml_literal_round_trips() -> None:
    for value in (1, 1e-3, True, "a b", [1, 2], ["x"]):
        assert parse_grid(f"k={toml_literal(value)}")[1] == [value]


def test_distributions_are_seeded_and_in_range() -> None:
    _, log = parse_random("train.learning_rate=loguniform(1e-4,1e-2)")
    draws = [log.sample(random.Random(3)) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = random.Random(0)
    assert all(1e-4 <= log.sample(rng) <= 1e-2 for _ in range(200))
    _, integer = parse_random("model.n_layer=int(2,4)")
    assert {integer.sample(rng) for _ in range(200)} == {2, 3, 4}
    _, choice = parse_random("model.bias=choice(true,false)")
    assert choice == Distribution("choice", (True, False))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("k=normal(0,1)", "not a distribution"),
        ("k=uniform(1)", "two numbers"),
        ("k=uniform(2,1)", "a < b"),
        ("k=loguniform(0,1)", "positive"),
        ("k=int(1.5,3)", "two integers"),
    ],
)
def test_bad_distributions_are_explained(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_random(spec)


def test_plan_expands_grid_times_seeds_with_stable_run_names(experiment_file: Path) -> None:
    plan = plan_sweep(
        str(experiment_file),
        [],
        None,
        grid=["train.learning_rate=1e-3,3e-3", "model.n_layer=1,2"],
        seeds=3,
    )
    assert len(plan.runs) == 12
    assert len({r.run_name for r in plan.runs}) == 12
    assert len({r.group_id for r in plan.runs}) == 4
    assert {r.seed for r in plan.runs} == {1337, 1338, 1339}
    again = plan_sweep(
        str(experiment_file),
        [],
        None,
        grid=["train.learning_rate=1e-3,3e-3", "model.n_layer=1,2"],
        seeds=3,
    )
    assert [r.run_name for r in again.runs] == [r.run_name for r in plan.runs]
    first = plan.runs[0]
    assert first.run_name == f"sweep-{first.group_id[:8]}-s1337"
    assert "train.learning_rate=0.001" in first.overrides


def test_plan_random_trials(experiment_file: Path) -> None:
    plan = plan_sweep(
        str(experiment_file),
        [],
        None,
        grid=["model.n_layer=1,2"],
        random_specs=["train.learning_rate=loguniform(1e-4,1e-2)"],
        trials=3,
        random_seed=5,
    )
    assert len(plan.runs) == 6
    lrs = [r.config["train.learning_rate"] for r in plan.runs]
    assert len(set(lrs)) == 6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "nothing to sweep"),
        ({"grid": ["model.n_layr=1,2"]}, "n_layr.*n_layer"),
        ({"grid": ["model.n_layer=0,2"]}, "n_layer"),
        ({"grid": ["train.run_name=a,b"]}, "don't sweep train.run_name"),
        ({"random_specs": ["train.learning_rate=uniform(0.1,0.2)"]}, "--trials"),
        ({"grid": ["model.n_layer=1,2", "model.n_layer=3"]}, "more than once"),
        ({"grid": ["train.seed=1,2"], "seeds": 2}, "don't sweep it"),
        ({"grid": ["data.vocab_size=64,128"]}, "one prepared dataset"),
    ],
)
def test_plan_rejects_bad_sweeps_before_running(
    experiment_file: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_sweep(str(experiment_file), [], None, **kwargs)  # type: ignore[arg-type]


def test_run_sweep_ranks_skips_isolates_failures_and_reports(
    experiment_file: Path, tmp_path: Path
) -> None:
    plan = plan_sweep(
        str(experiment_file), [], None, grid=["train.learning_rate=0.002,0.001,0.5"], seeds=2
    )
    executor = RecordingExecutor()
    result = run_sweep(plan, tmp_path, executor, parallel=2, mlflow=False)
    assert len(executor.tasks) == 6
    assert len(result.branches.failed()) == 2
    assert len(result.branches.successful()) == 4
    groups = result.comparison.groups
    assert [g.label for g in groups] == [
        "train.learning_rate=0.001",
        "train.learning_rate=0.002",
        "train.learning_rate=0.5",
    ]
    assert groups[0].mean == pytest.approx(0.1 + 1337.5 / 1000)
    assert groups[2].failed == 2
    assert result.comparison.test is not None
    assert result.comparison.test.significant  # 0.1 apart, seed noise 0.001
    report = json.loads((result.directory / "sweep.json").read_text())
    assert [b["status"] for b in report["branches"]].count("failed") == 2
    failed = [b for b in report["branches"] if b["status"] == "failed"]
    assert "RuntimeError: diverged" in failed[0]["exception"]["message"]
    assert (result.directory / "val_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 1 | train.learning_rate=0.001 | 2 |" in (result.directory / "results.md").read_text()
    # Each task carries the overrides a person would type, plus the derived run name.
    assert all(_override(t, "train.run_name") for t in executor.tasks)
    assert all(t.env["OMP_NUM_THREADS"] for t in executor.tasks)

    again = RecordingExecutor()
    rerun = run_sweep(plan, tmp_path, again, parallel=2, mlflow=False)
    assert len(again.tasks) == 2  # only the two failed runs are tried again
    assert len(rerun.branches.skipped()) == 4


def test_sweep_logs_a_parent_run_with_the_report(experiment_file: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    plan = plan_sweep(str(experiment_file), [], None, grid=["train.learning_rate=0.002,0.001"])
    executor = RecordingExecutor()
    result = run_sweep(plan, tmp_path, executor, mlflow=True)
    assert result.parent_run_id is not None
    assert all(
        f"tracking.mlflow_parent_run_id={result.parent_run_id}" in t.overrides
        for t in executor.tasks
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_val_loss"] == pytest.approx(0.1)
    names = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"results.md", "sweep.json", "val_loss.png"} <= names
    rerun = run_sweep(plan, tmp_path, RecordingExecutor(), mlflow=True)
    assert rerun.parent_run_id == result.parent_run_id  # a re-run continues the parent


def test_executor_factory_and_command_line(tmp_path: Path) -> None:
    assert isinstance(make_executor("local"), LocalExecutor)
    with pytest.raises(ConfigError, match="unknown executor 'slurm'"):
        make_executor("slurm")
    with pytest.raises(ConfigError, match="only applies to --executor ray"):
        make_executor("local", "127.0.0.1:6379")
    task = TrainTask("tiny", ("a=1",), tmp_path, tmp_path / "log", config_file=tmp_path / "c")
    assert task.argv("py") == [
        "py", "-m", "ml_playground", "train", "tiny", "a=1",
        "--workdir", str(tmp_path), "--config", str(tmp_path / "c"),
    ]  # fmt: skip
