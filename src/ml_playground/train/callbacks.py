"""The training loop's event API and its built-in listeners.

The loop announces what happened (`on_train_start`, `on_log`, `on_eval`, `on_checkpoint`,
`on_train_end`); everything that records or shows it is a `Callback`. Subclass and override only
the events you need: the base class ignores the rest.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ml_playground.tracking.base import Tracker


@dataclass(frozen=True)
class RunStart:
    run_dir: Path
    start_iter: int
    max_iters: int
    num_params: int
    device: str
    dtype: str
    params: dict[str, Any]


@dataclass(frozen=True)
class LogEvent:
    """Progress between evaluations: the last step's training loss and speed."""

    iter: int
    loss: float
    lr: float
    tokens_per_s: float


@dataclass(frozen=True)
class EvalEvent:
    """One row of `metrics.jsonl`."""

    iter: int
    train_loss: float
    val_loss: float
    lr: float
    tokens_per_s: float
    best_val_loss: float
    is_best: bool


@dataclass(frozen=True)
class CheckpointEvent:
    kind: str  # "last" or "best"
    iter: int
    path: Path


class Callback:
    """Base listener; every hook is a no-op until overridden."""

    def on_train_start(self, event: RunStart) -> None:
        return None

    def on_log(self, event: LogEvent) -> None:
        return None

    def on_eval(self, event: EvalEvent) -> None:
        return None

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        return None

    def on_train_end(self, summary: dict[str, Any]) -> None:
        return None


class MetricsFile(Callback):
    """Appends each evaluation to `metrics.jsonl` (one JSON object per line)."""

    FIELDS = ("iter", "train_loss", "val_loss", "lr", "tokens_per_s")

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_eval(self, event: EvalEvent) -> None:
        row = {key: value for key, value in asdict(event).items() if key in self.FIELDS}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


class TrackerCallback(Callback):
    """Forwards the run to a `Tracker` under the usual metric names."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def on_train_start(self, event: RunStart) -> None:
        self.tracker.log_params(event.params)

    def on_log(self, event: LogEvent) -> None:
        self.tracker.log_metrics(
            {
                "loss/train_step": event.loss,
                "lr": event.lr,
                "throughput/tokens_per_s": event.tokens_per_s,
            },
            event.iter,
        )

    def on_eval(self, event: EvalEvent) -> None:
        self.tracker.log_metrics(
            {"loss/train": event.train_loss, "loss/val": event.val_loss}, event.iter
        )

    def on_train_end(self, summary: dict[str, Any]) -> None:
        self.tracker.close()


class ProgressBar(Callback):
    """A rich progress bar (iter, loss, lr, tokens/s, ETA) plus one line per evaluation.

    On a terminal the bar redraws in place; elsewhere (CI, pipes) only the evaluation lines are
    printed, so logs stay readable.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}"),
            TextColumn("{task.fields[tps]:,.0f} tok/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.task: TaskID | None = None

    def on_train_start(self, event: RunStart) -> None:
        resumed = f", resumed at iter {event.start_iter}" if event.start_iter else ""
        self.console.print(
            f"training {event.num_params / 1e6:.2f}M parameters on {event.device} "
            f"({event.dtype}){resumed} → {event.run_dir}"
        )
        self.task = self.progress.add_task(
            "train",
            total=event.max_iters,
            completed=event.start_iter,
            loss=float("nan"),
            lr=0.0,
            tps=0.0,
        )
        self.progress.start()

    def on_log(self, event: LogEvent) -> None:
        if self.task is not None:
            self.progress.update(
                self.task,
                completed=event.iter,
                loss=event.loss,
                lr=event.lr,
                tps=event.tokens_per_s,
            )

    def on_eval(self, event: EvalEvent) -> None:
        marker = "  *best" if event.is_best else ""
        self.progress.console.print(
            f"iter {event.iter:>6}  train {event.train_loss:.4f}  val {event.val_loss:.4f}  "
            f"lr {event.lr:.2e}  {event.tokens_per_s:,.0f} tok/s{marker}"
        )

    def on_train_end(self, summary: dict[str, Any]) -> None:
        self.progress.stop()
