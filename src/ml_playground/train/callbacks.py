"""The training loop's event API and its built-in listeners.

The loop announces what happened (`on_train_start`, `on_log`, `on_eval`, `on_sample`,
`on_checkpoint`, `on_train_end`); everything that records or shows it is a `Callback`. Subclass
and override only the events you need: the base class ignores the rest. A callback that wants
the run to end (early stopping) calls `event.control.request_stop(reason)` on the `RunStart`
event it received; the loop then saves `last` and finishes normally.

Under torchrun only rank 0 runs callbacks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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


@dataclass
class TrainControl:
    """The one thing callbacks may change: ask the loop to stop after this step."""

    stop_reason: str | None = None

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason


@dataclass(frozen=True)
class RunStart:
    run_dir: Path
    start_iter: int
    max_iters: int
    num_params: int
    device: str
    dtype: str
    params: dict[str, Any]
    control: TrainControl = field(default_factory=TrainControl)
    resumed: bool = False


@dataclass(frozen=True)
class LogEvent:
    """Progress between evaluations: the last step's training loss and speed."""

    iter: int
    loss: float
    lr: float
    tokens_per_s: float
    grad_norm: float | None = None
    mfu: float | None = None  # model FLOPs utilization, 0..1, where the device peak is known
    bad_steps: int = 0


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
    best_iter: int = -1


@dataclass(frozen=True)
class SampleEvent:
    """Text generated from the [sample] prompt during training."""

    iter: int
    text: str


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

    def on_sample(self, event: SampleEvent) -> None:
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
        metrics = {
            "loss/train_step": event.loss,
            "lr": event.lr,
            "throughput/tokens_per_s": event.tokens_per_s,
        }
        if event.grad_norm is not None:
            metrics["grad_norm"] = event.grad_norm
        if event.mfu is not None:
            metrics["throughput/mfu"] = event.mfu
        self.tracker.log_metrics(metrics, event.iter)

    def on_eval(self, event: EvalEvent) -> None:
        self.tracker.log_metrics(
            {"loss/train": event.train_loss, "loss/val": event.val_loss}, event.iter
        )

    def on_sample(self, event: SampleEvent) -> None:
        self.tracker.log_text("samples", event.text, event.iter)

    def on_train_end(self, summary: dict[str, Any]) -> None:
        status = {"interrupted": "KILLED", "failed": "FAILED"}.get(summary.get("status", ""))
        self.tracker.close(status or "FINISHED")


class EarlyStopping(Callback):
    """Stop when val loss has not improved for `patience` evaluations.

    It counts evaluations since `best_iter` rather than keeping its own counter, so a resumed
    run stops exactly where the uninterrupted one would have.
    """

    def __init__(self, patience: int, eval_interval: int) -> None:
        self.patience = patience
        self.eval_interval = eval_interval
        self.control = TrainControl()

    def on_train_start(self, event: RunStart) -> None:
        self.control = event.control

    def on_eval(self, event: EvalEvent) -> None:
        evals_since_best = (event.iter - max(event.best_iter, 0)) // self.eval_interval
        if evals_since_best >= self.patience:
            self.control.request_stop(
                f"early stop: val loss has not improved for {evals_since_best} evaluations "
                f"(best {event.best_val_loss:.4f} at iter {event.best_iter})"
            )


class SampleWriter(Callback):
    """Writes each training-time sample to `samples/iter_0000500.txt` in the run dir.

    With `metrics` (text → JSON-ready dict, e.g. the sample-quality scores of
    `ml_playground.analysis.samples`) it also writes `iter_0000500.metrics.json` beside it.
    """

    def __init__(
        self, directory: Path, metrics: Callable[[str], dict[str, Any]] | None = None
    ) -> None:
        self.directory = directory
        self.metrics = metrics

    def on_sample(self, event: SampleEvent) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"iter_{event.iter:07d}.txt").write_text(event.text, "utf-8")
        if self.metrics is not None:
            scores = json.dumps(self.metrics(event.text), indent=1)
            (self.directory / f"iter_{event.iter:07d}.metrics.json").write_text(scores, "utf-8")


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

    def on_sample(self, event: SampleEvent) -> None:
        self.progress.console.print(f"--- sample at iter {event.iter} ---\n{event.text}\n---")

    def on_train_end(self, summary: dict[str, Any]) -> None:
        self.progress.stop()
        if summary.get("stop_reason"):
            self.console.print(summary["stop_reason"])
