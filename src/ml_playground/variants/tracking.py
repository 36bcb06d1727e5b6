"""Record branches with the same `Tracker` protocol training uses: in memory, MLflow, TensorBoard.

A tracker factory is called once per finished branch and returns a fresh `Tracker`; the branch's
config goes in as params, its duration and numeric outputs as metrics, a failure's traceback as
text (an artifact in MLflow), and the run ends FINISHED or FAILED. So `mlflow ui` shows one run per
branch, nested under a parent run when one is given.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from numbers import Real
from pathlib import Path
from typing import Any

from ml_playground.tracking.base import InMemoryTracker, Tracker
from ml_playground.variants.branch import Branch, BranchStatus

TrackerFactory = Callable[[Branch], Tracker]

log = logging.getLogger(__name__)


def branch_metrics(branch: Branch) -> dict[str, float]:
    """Duration plus whatever in the output is a number: a scalar, or a flat dict's numbers."""
    metrics: dict[str, float] = {}
    if branch.duration_s is not None:
        metrics["branch/duration_s"] = branch.duration_s
    output = branch.output
    if isinstance(output, Real) and not isinstance(output, bool):
        metrics["output"] = float(output)
    elif isinstance(output, Mapping):
        for key, value in output.items():
            if isinstance(value, Real) and not isinstance(value, bool):
                metrics[f"output/{key}"] = float(value)
    return metrics


def record_branch(tracker: Tracker, branch: Branch) -> None:
    """Write one finished branch to `tracker` and close it with the matching status."""
    tracker.log_params(params_of(branch))
    tracker.log_metrics(branch_metrics(branch), step=0)
    if branch.exception_info is not None:
        tracker.log_text("exception", branch.exception_info.traceback, step=0)
    tracker.close("FAILED" if branch.status is BranchStatus.FAILED else "FINISHED")


def safely_record(factory: TrackerFactory | None, branch: Branch) -> None:
    """Tracking is a side channel: its failure is logged, never turned into a branch failure."""
    if factory is None:
        return
    try:
        record_branch(factory(branch), branch)
    except Exception:
        log.exception("could not record branch %s", branch.config_id)


class InMemoryTrackers:
    """A factory that keeps every branch's `InMemoryTracker`, by config id (tests, notebooks)."""

    def __init__(self) -> None:
        self.trackers: dict[str, list[InMemoryTracker]] = {}
        self._lock = threading.Lock()

    def __call__(self, branch: Branch) -> Tracker:
        tracker = InMemoryTracker()
        with self._lock:
            self.trackers.setdefault(branch.config_id, []).append(tracker)
        return tracker


class MLflowTrackers:
    """One MLflow run per branch (run name = config id), optionally under `parent_run_id`."""

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment: str,
        artifact_dir: Path,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.artifact_dir = artifact_dir
        self.parent_run_id = parent_run_id
        self.tags = dict(tags or {})
        self.run_ids: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, branch: Branch) -> Tracker:
        from ml_playground.tracking.mlflow import MLflowTracker

        with self._lock:  # experiment creation must not race between branches
            tracker = MLflowTracker(
                tracking_uri=self.tracking_uri,
                experiment=self.experiment,
                run_name=branch.config_id,
                artifact_dir=self.artifact_dir,
                parent_run_id=self.parent_run_id,
                tags=self.tags | {"config_id": branch.config_id},
            )
            self.run_ids.append(tracker.run_id)
        return tracker


class TensorBoardTrackers:
    """Event files under `log_dir/<config_id>/`, so TensorBoard lists branches side by side."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir

    def __call__(self, branch: Branch) -> Tracker:
        from ml_playground.tracking.tensorboard import TensorBoardTracker

        return TensorBoardTracker(self.log_dir / branch.config_id)


def params_of(branch: Branch) -> dict[str, Any]:
    """The params a tracker receives for `branch`: its id and status, then its settings."""
    return {"config_id": branch.config_id, "branch_status": str(branch.status)} | dict(
        branch.config
    )
