"""Branches recorded through the shared Tracker protocol: in memory and in MLflow (read back)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ml_playground.variants.config import Config
from ml_playground.variants.experiment import experiment
from ml_playground.variants.tracking import InMemoryTrackers, MLflowTrackers, TensorBoardTrackers


def _flaky(*, config: Config) -> dict[str, float]:
    if config["lr"] > 0.01:
        raise RuntimeError("diverged")
    return {"val_loss": 1.0 + config["lr"], "note": "text is not a metric"}  # type: ignore[dict-item]


def test_in_memory_tracker_gets_params_metrics_trace_and_status() -> None:
    trackers = InMemoryTrackers()
    run = experiment([{"lr": 0.001}, {"lr": 0.1}], tracker=trackers)(_flaky)
    branches = run()
    ok, bad = branches
    (ok_tracker,) = trackers.trackers[ok.config_id]
    assert ok_tracker.params["lr"] == 0.001
    assert ok_tracker.params["branch_status"] == "success"
    assert ok_tracker.series("output/val_loss") == [(0, pytest.approx(1.001))]
    assert ok_tracker.series("branch/duration_s")
    assert ok_tracker.status == "FINISHED"
    (bad_tracker,) = trackers.trackers[bad.config_id]
    assert bad_tracker.status == "FAILED"
    assert "RuntimeError: diverged" in bad_tracker.texts[0][2]


def test_tracker_failure_does_not_fail_the_branch(caplog: pytest.LogCaptureFixture) -> None:
    def broken(branch: object) -> object:
        raise OSError("tracking server down")

    run = experiment([{"lr": 0.001}], tracker=broken)(_flaky)  # type: ignore[arg-type]
    (branch,) = run()
    assert branch.output["val_loss"] == pytest.approx(1.001)
    assert "could not record branch" in caplog.text


def test_mlflow_one_run_per_branch_under_a_parent(tmp_path: Path) -> None:
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("variants", artifact_location=tmp_path.as_uri())
    parent = client.create_run(experiment_id, run_name="sweep").info.run_id
    trackers = MLflowTrackers(
        tracking_uri=uri, experiment="variants", artifact_dir=tmp_path, parent_run_id=parent
    )
    branches = experiment([{"lr": 0.001}, {"lr": 0.1}], tracker=trackers)(_flaky)()
    runs = {
        r.data.params["config_id"]: r
        for r in client.search_runs([experiment_id], filter_string="tags.config_id != ''")
    }
    ok, bad = branches
    assert set(runs) == {ok.config_id, bad.config_id}
    assert runs[ok.config_id].info.status == "FINISHED"
    assert runs[ok.config_id].data.metrics["output/val_loss"] == pytest.approx(1.001)
    assert runs[ok.config_id].data.params["lr"] == "0.001"
    assert runs[bad.config_id].info.status == "FAILED"
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in runs.values())
    artifact = client.download_artifacts(runs[bad.config_id].info.run_id, "exception", tmp_path)
    (trace_file,) = Path(artifact).iterdir()
    assert "RuntimeError: diverged" in trace_file.read_text()


def test_tensorboard_writes_one_directory_per_branch(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    branches = experiment([{"lr": 0.001}, {"lr": 0.002}], tracker=TensorBoardTrackers(tmp_path))(
        _flaky
    )()
    for branch in branches:
        events = EventAccumulator(str(tmp_path / branch.config_id))
        events.Reload()
        assert "output/val_loss" in events.Tags()["scalars"]
