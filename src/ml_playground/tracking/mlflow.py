"""MLflow tracking (optional extra `track`): params, metrics and samples of a run.

The tracking URI follows MLflow's own convention: `$MLFLOW_TRACKING_URI` wins, then
`tracking.mlflow_uri`, then `sqlite:///<workdir>/mlflow.db` (MLflow refuses a bare file store
now). Artifacts of experiments we create go to `<workdir>/mlartifacts`, never to the current
directory. A resumed training run continues the same MLflow run (its id is kept in the run dir).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ml_playground.errors import ConfigError

RUN_ID_FILE = "mlflow_run_id"


def default_tracking_uri(workdir: Path, configured: str | None) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        return configured
    return f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → `section.key` params, values as MLflow stores them (strings)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


class MLflowTracker:
    """One MLflow run. `parent_run_id` nests it under a sweep's parent run."""

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        artifact_dir: Path,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ConfigError(
                "tracking.mlflow=true needs MLflow: pip install 'ml_playground[track]'"
            ) from exc
        self.client = MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifact_dir.resolve().as_uri()
            )
        self.resumed = run_id is not None
        if run_id is None:
            all_tags = dict(tags or {})
            if parent_run_id is not None:
                all_tags["mlflow.parentRunId"] = parent_run_id
            run = self.client.create_run(experiment_id, run_name=run_name, tags=all_tags)
            run_id = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id: str = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        # A resumed run already has its params; MLflow refuses to change a logged param.
        if self.resumed:
            return
        from mlflow.entities import Param

        items = [Param(key, value[:6000]) for key, value in flatten(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_text(self, tag: str, text: str, step: int) -> None:
        self.client.log_text(self.run_id, text, f"{tag}/step_{step:07d}.txt")

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
