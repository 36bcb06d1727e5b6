"""MLflow tracking: where runs go, how params are named, and that a resumed run is the same run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.tracking.mlflow import RUN_ID_FILE, default_tracking_uri, flatten
from ml_playground.train.loop import train

MakeConfig = Callable[..., ExperimentConfig]

# MLflow 3's sqlite store triggers a SQLAlchemy 2.1 deprecation warning on first use; pyproject's
# filterwarnings ignores exactly that one.


@pytest.fixture(autouse=True)
def quiet_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


# --- the tracking URI ----------------------------------------------------------------------------
def test_default_uri_is_sqlite_in_the_workdir(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path, None)
    assert uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"


def test_configured_uri_beats_the_default(tmp_path: Path) -> None:
    assert default_tracking_uri(tmp_path, "http://mlflow:5000") == "http://mlflow:5000"


def test_environment_beats_the_configured_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert default_tracking_uri(tmp_path, "http://mlflow:5000") == "sqlite:///elsewhere.db"
    assert default_tracking_uri(tmp_path, None) == "sqlite:///elsewhere.db"


def test_flatten_names_params_by_section() -> None:
    flat = flatten(
        {
            "name": "tiny",
            "train": {"max_iters": 10, "lr": 0.5, "ema_decay": None, "compile": False},
            "model": {"inner": {"deep": [1, 2]}},
        }
    )
    assert flat == {
        "name": "tiny",
        "train.max_iters": "10",
        "train.lr": "0.5",
        "train.ema_decay": "null",
        "train.compile": "false",
        "model.inner.deep": "[1, 2]",
    }


# --- a real run ----------------------------------------------------------------------------------
def test_a_run_is_logged_and_its_resume_continues_the_same_mlflow_run(
    make_config: MakeConfig, workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    uri = f"sqlite:///{(tmp_path / 'tracking' / 'mlflow.db').as_posix()}"
    (tmp_path / "tracking").mkdir()
    settings = ("tracking.mlflow=true", f"tracking.mlflow_uri='{uri}'", "train.sample_interval=10")

    config = make_config(*settings, "train.max_iters=10")
    prepare_dataset(config.data, workdir, config.name)
    first = train(config, workdir)

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")  # named after the config
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    run_id = run.info.run_id
    assert (first.run_dir / RUN_ID_FILE).read_text("utf-8").strip() == run_id
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "main"
    assert run.data.params["train.max_iters"] == "10"
    assert run.data.params["model.n_layer"] == "2"
    val = client.get_metric_history(run_id, "loss/val")
    assert sorted(m.step for m in val) == [0, 10]
    rows = [
        json.loads(line)
        for line in (first.run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    ]
    assert sorted((m.step, m.value) for m in val) == [
        (row["iter"], pytest.approx(row["val_loss"], rel=1e-6)) for row in rows
    ]
    assert {"loss/train", "lr", "throughput/tokens_per_s"} <= set(run.data.metrics)
    # The sample went to the experiment's artifact store under the workdir.
    assert [a.path for a in client.list_artifacts(run_id, "samples")] == [
        "samples/step_0000010.txt"
    ]
    assert list((workdir / "mlartifacts").rglob("step_0000010.txt"))

    resumed = train(make_config(*settings, "train.max_iters=20"), workdir)
    assert resumed.summary["iters"] == 20
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # the same run, not a second one
    assert (resumed.run_dir / RUN_ID_FILE).read_text("utf-8").strip() == run_id
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.params["train.max_iters"] == "10"  # params are logged once
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss/val")) == [0, 10, 20]

    # Nothing landed in the current directory (no ./mlruns, ./mlartifacts, ./mlflow.db).
    assert list(cwd.iterdir()) == []
    assert not (workdir / "mlflow.db").exists()  # the configured URI was used


def test_no_resume_starts_a_new_mlflow_run(
    make_config: MakeConfig, workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = make_config("tracking.mlflow=true", "train.max_iters=2", "train.eval_interval=2")
    prepare_dataset(config.data, workdir, config.name)
    first = train(config, workdir)
    # Without tracking.mlflow_uri the store is sqlite in the workdir.
    client = MlflowClient(tracking_uri=default_tracking_uri(workdir, None))
    assert (workdir / "mlflow.db").is_file()
    first_id = (first.run_dir / RUN_ID_FILE).read_text("utf-8").strip()

    again = train(config, workdir, resume=False)
    second_id = (again.run_dir / RUN_ID_FILE).read_text("utf-8").strip()
    assert second_id != first_id
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    ids = {r.info.run_id for r in client.search_runs([experiment.experiment_id])}
    assert ids == {first_id, second_id}
