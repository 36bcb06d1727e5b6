"""One `Tracker` protocol for everything that records a run: TensorBoard, MLflow, in-memory.

Metric names follow TensorBoard/MLflow habit: `loss/train`, `loss/val`, `lr`,
`throughput/tokens_per_s`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_text(self, tag: str, text: str, step: int) -> None: ...

    def close(self, status: str = "FINISHED") -> None:
        """End the run; `status` is FINISHED, KILLED (interrupted) or FAILED (crashed)."""
        ...


@dataclass
class InMemoryTracker:
    """Keeps everything in lists: for tests and for code that wants the numbers back."""

    params: dict[str, Any] = field(default_factory=dict)
    metrics: list[tuple[int, str, float]] = field(default_factory=list)
    texts: list[tuple[int, str, str]] = field(default_factory=list)
    closed: bool = False
    status: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.extend((step, name, value) for name, value in metrics.items())

    def log_text(self, tag: str, text: str, step: int) -> None:
        self.texts.append((step, tag, text))

    def close(self, status: str = "FINISHED") -> None:
        self.closed = True
        self.status = status

    def series(self, name: str) -> list[tuple[int, float]]:
        return [(step, value) for step, metric, value in self.metrics if metric == name]
