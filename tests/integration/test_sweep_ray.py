"""The sweep's Ray executor on a private local Ray instance (loopback): two real training runs
execute as Ray tasks and land in the same run directories a local sweep would write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_EXPERIMENT, write_corpus
from ml_playground.variants.sweep import plan_sweep, run_sweep

pytestmark = pytest.mark.slow


def test_ray_executor_runs_sweep_branches(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'ml_playground[ray]'")
    from ml_playground.variants.executors import RayExecutor

    corpus = write_corpus(tmp_path / "corpus.txt")
    experiment = tmp_path / "tiny.toml"
    experiment.write_text(TINY_EXPERIMENT.format(corpus=corpus.as_posix()))
    plan = plan_sweep(
        str(experiment), ["train.max_iters=6"], None, grid=["model.n_layer=1,2"], name="ray"
    )
    executor = RayExecutor("local")
    try:
        result = run_sweep(plan, tmp_path / "work", executor, parallel=2, mlflow=False)
    finally:
        executor.close()
    assert [b.status for b in result.branches] == ["success", "success"]
    for run in plan.runs:
        summary = json.loads(
            (tmp_path / "work" / "runs" / "tiny" / run.run_name / "summary.json").read_text()
        )
        assert summary["iters"] == 6
    assert [g.mean is not None for g in result.comparison.groups] == [True, True]
