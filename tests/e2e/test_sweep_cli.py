"""`ml-playground sweep` as a user runs it: 2x2 tiny configs → 4 real runs, a table, a PNG,
MLflow parent + children; then `runs compare` over what the sweep left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli_runner import cli, ok
from conftest import TINY_EXPERIMENT, write_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("sweep")
    corpus = write_corpus(root / "corpus.txt")
    (root / "tiny.toml").write_text(TINY_EXPERIMENT.format(corpus=corpus.as_posix()))
    result = ok(
        cli(
            "sweep", "tiny.toml", "train.max_iters=10",
            "--grid", "train.learning_rate=1e-3,1e-2",
            "--grid", "model.n_layer=1,2",
            "--parallel", "2", "--name", "grid",
            "--workdir", "work",
            cwd=root, timeout=600,
        )
    )  # fmt: skip
    return root, result.stdout


def test_sweep_trains_four_runs_and_reports(swept: tuple[Path, str]) -> None:
    root, stdout = swept
    runs = root / "work" / "runs" / "tiny"
    run_dirs = sorted(p for p in runs.glob("grid-*") if p.is_dir())
    assert len(run_dirs) == 4
    for run_dir in run_dirs:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["iters"] == 10
    report_dir = runs / "sweeps" / "grid"
    assert (report_dir / "val_loss.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((report_dir / "sweep.json").read_text())
    assert [b["status"] for b in report["branches"]] == ["success"] * 4
    means = [g["mean_best_val_loss"] for g in report["comparison"]["groups"]]
    assert means == sorted(means)
    for n_layer in (1, 2):
        assert f"model.n_layer={n_layer}" in stdout
    # Each run got the settings its branch asked for.
    configs = {p.name: (p / "config.toml").read_text() for p in run_dirs}
    assert sum("learning_rate = 0.01\n" in text for text in configs.values()) == 2
    assert sum("n_layer = 1\n" in text for text in configs.values()) == 2


def test_sweep_runs_are_children_of_one_mlflow_parent(swept: tuple[Path, str]) -> None:
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    from mlflow.tracking import MlflowClient

    root, _ = swept
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'work' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.info.run_name == "sweep:grid"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 4
    assert all(r.info.status == "FINISHED" for r in children)
    assert all("loss/val" in r.data.metrics for r in children)


def test_rerun_skips_finished_runs_and_runs_compare_ranks_them(swept: tuple[Path, str]) -> None:
    root, _ = swept
    again = ok(
        cli(
            "sweep", "tiny.toml", "train.max_iters=10",
            "--grid", "train.learning_rate=1e-3,1e-2", "--grid", "model.n_layer=1,2",
            "--name", "grid", "--workdir", "work", "--no-mlflow",
            cwd=root, timeout=300,
        )
    )  # fmt: skip
    assert "4 of 4 runs finished earlier" in again.stderr
    compared = ok(cli("runs", "compare", "tiny.toml", "--workdir", "work", cwd=root))
    lines = [line for line in compared.stdout.splitlines() if "model.n_layer=" in line]
    assert len(lines) == 4


def test_bad_sweep_key_fails_fast_with_exit_2(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    (tmp_path / "tiny.toml").write_text(TINY_EXPERIMENT.format(corpus=corpus.as_posix()))
    result = cli("sweep", "tiny.toml", "--grid", "train.learnin_rate=1,2", cwd=tmp_path)
    assert result.returncode == 2
    assert "learnin_rate" in result.stderr
    assert "learning_rate" in result.stderr
    assert not (tmp_path / "runs").exists()
