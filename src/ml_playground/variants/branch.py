"""One config's run of a function (`Branch`) and the runs of one call (`BranchContainer`).

A branch records what an experiment needs to be judged later: which config, when it started and
ended, what it returned or how it failed (type, message, traceback). Status moves one way only —
pending → success | failed | skipped — and a finished branch refuses to change, so a late
callback can never rewrite a result that was already reported.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, overload

from ml_playground.variants.config import Config


class BranchStatus(StrEnum):
    PENDING = "pending"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"


class InvalidTransition(RuntimeError):
    """A branch was asked to start twice, or to change after it finished: a bug in a strategy."""


@dataclass(frozen=True)
class ExceptionInfo:
    type: str
    message: str
    traceback: str

    @classmethod
    def capture(cls, exc: BaseException) -> ExceptionInfo:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(type(exc).__qualname__, str(exc), text)


class Branch:
    """The run of one config. Thread-safe: strategies finish branches from worker threads."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.status = BranchStatus.PENDING
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.output: Any = None
        self.exception: BaseException | None = None
        self.exception_info: ExceptionInfo | None = None
        self.skip_reason: str | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._clock_start: float | None = None
        self._clock_end: float | None = None

    @property
    def config_id(self) -> str:
        return self.config.config_id

    @property
    def duration_s(self) -> float | None:
        """Monotonic seconds between start and end (wall-clock jumps don't distort it)."""
        if self._clock_start is None or self._clock_end is None:
            return None
        return self._clock_end - self._clock_start

    @property
    def done(self) -> bool:
        return self.status is not BranchStatus.PENDING

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the branch has finished; False if `timeout` ran out first."""
        return self._done.wait(timeout)

    def start(self) -> None:
        with self._lock:
            if self.status is not BranchStatus.PENDING or self.started_at is not None:
                raise InvalidTransition(f"branch {self.config_id} already started ({self.status})")
            self.started_at = time.time()
            self._clock_start = time.monotonic()

    def succeed(self, output: Any) -> None:
        with self._lock:
            self._finish(BranchStatus.SUCCESS, needs_start=True)
            self.output = output
        self._done.set()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            self._finish(BranchStatus.FAILED, needs_start=True)
            self.exception = exc
            self.exception_info = ExceptionInfo.capture(exc)
        self._done.set()

    def skip(self, reason: str, output: Any = None) -> None:
        """Not run (e.g. its result exists already); `output` may carry that earlier result."""
        with self._lock:
            self._finish(BranchStatus.SKIPPED, needs_start=False)
            self.skip_reason = reason
            self.output = output
        self._done.set()

    def _finish(self, status: BranchStatus, *, needs_start: bool) -> None:
        if self.status is not BranchStatus.PENDING:
            raise InvalidTransition(f"branch {self.config_id} already {self.status}")
        if needs_start and self.started_at is None:
            raise InvalidTransition(f"branch {self.config_id} cannot be {status} before start")
        if not needs_start and self.started_at is not None:
            raise InvalidTransition(f"branch {self.config_id} already started; cannot skip it")
        self.status = status
        self.ended_at = time.time()
        self._clock_end = time.monotonic()
        if self._clock_start is None:
            self._clock_start = self._clock_end

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record; timestamps as ISO 8601 UTC, the output only if JSON can hold it."""

        def iso(stamp: float | None) -> str | None:
            return None if stamp is None else datetime.fromtimestamp(stamp, UTC).isoformat()

        info = self.exception_info
        return {
            "config_id": self.config_id,
            "config": self.config.to_dict(),
            "status": str(self.status),
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "duration_s": self.duration_s,
            "output": self.output if _jsonable(self.output) else repr(self.output),
            "exception": None
            if info is None
            else {"type": info.type, "message": info.message, "traceback": info.traceback},
            "skip_reason": self.skip_reason,
        }

    def __repr__(self) -> str:
        return f"Branch({self.config_id}, {self.status})"


def _jsonable(value: Any) -> bool:
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


class BranchContainer(Sequence[Branch]):
    """The branches of one call, in config order, with the filters a comparison needs."""

    def __init__(self, branches: Sequence[Branch]) -> None:
        self._branches = list(branches)

    @overload
    def __getitem__(self, index: int) -> Branch: ...

    @overload
    def __getitem__(self, index: slice) -> BranchContainer: ...

    def __getitem__(self, index: int | slice) -> Branch | BranchContainer:
        if isinstance(index, slice):
            return BranchContainer(self._branches[index])
        return self._branches[index]

    def __len__(self) -> int:
        return len(self._branches)

    def __iter__(self) -> Iterator[Branch]:
        return iter(self._branches)

    def successful(self) -> BranchContainer:
        return BranchContainer([b for b in self._branches if b.status is BranchStatus.SUCCESS])

    def failed(self) -> BranchContainer:
        return BranchContainer([b for b in self._branches if b.status is BranchStatus.FAILED])

    def skipped(self) -> BranchContainer:
        return BranchContainer([b for b in self._branches if b.status is BranchStatus.SKIPPED])

    def by_config_id(self, config_id: str) -> Branch:
        for branch in self._branches:
            if branch.config_id == config_id:
                return branch
        known = ", ".join(b.config_id for b in self._branches)
        raise KeyError(f"no branch with config_id {config_id!r} (have: {known})")

    def outputs(self) -> dict[str, Any]:
        """config_id → output of every successful branch."""
        return {b.config_id: b.output for b in self.successful()}

    def to_dicts(self) -> list[dict[str, Any]]:
        return [b.to_dict() for b in self._branches]

    def __repr__(self) -> str:
        return f"BranchContainer({self._branches!r})"
