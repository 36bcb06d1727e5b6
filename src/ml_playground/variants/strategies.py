"""How one call is spread over configs: round-robin, shadow, multi-branch — and your own.

A strategy receives a `BranchRunner` (which runs the user's function for one config and turns the
outcome into a finished `Branch`) and the config pool, and decides what to run and what to return:

- `RoundRobin`: one config per call, cycling through the pool; returns the plain result (a failed
  branch re-raises its exception, as the undecorated function would).
- `Shadow`: the primary config answers; the others run in the background and are recorded, never
  returned (shadow traffic). Background branches are inspectable and awaitable, and the process
  waits for them at exit rather than dropping them.
- `MultiBranch`: every config, concurrently, at most `max_concurrency` at a time; returns a
  `BranchContainer`. One branch failing never touches the others.

`register_strategy` adds a strategy by name; `get_strategy` builds one; `list_strategies` lists.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import inspect
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from ml_playground.errors import ConfigError
from ml_playground.variants.branch import Branch, BranchContainer, BranchStatus
from ml_playground.variants.config import Config
from ml_playground.variants.tracking import TrackerFactory, safely_record


# --- a private event loop for sync callers and background branches -----------------------------
class BackgroundLoop:
    """An event loop on a daemon thread: sync wrappers run strategies on it, and shadow branches
    of async functions live on it, so they outlive the caller's own (possibly closed) loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="ml-playground-variants", daemon=True
        )
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if threading.current_thread() is self._thread:
            raise RuntimeError("a sync experiment cannot be called from inside another one")
        return self.submit(coro).result()


_background: BackgroundLoop | None = None
_background_lock = threading.Lock()
_in_flight: set[concurrent.futures.Future[Any]] = set()
_in_flight_lock = threading.Lock()


def background_loop() -> BackgroundLoop:
    global _background
    with _background_lock:
        if _background is None:
            _background = BackgroundLoop()
            atexit.register(drain_background)
        return _background


def _track(future: concurrent.futures.Future[Any]) -> None:
    with _in_flight_lock:
        _in_flight.add(future)

    def forget(done: concurrent.futures.Future[Any]) -> None:
        with _in_flight_lock:
            _in_flight.discard(done)

    future.add_done_callback(forget)


def drain_background(timeout: float | None = None) -> int:
    """Wait for every background branch still running; returns how many were waited for.

    Registered with `atexit`, so a script that ends right after a shadowed call still records
    the shadow branches instead of killing them mid-run.
    """
    with _in_flight_lock:
        pending = list(_in_flight)
    concurrent.futures.wait(pending, timeout=timeout)
    return len(pending)


# --- running one branch ----------------------------------------------------------------------
class BranchRunner:
    """Runs `fn(*args, config=config, **kwargs)` for one config and finishes its `Branch`.

    Sync functions run on `pool` (a thread pool), async ones on the running loop. Exceptions
    become failed branches; `BaseException`s that are not errors (cancellation, Ctrl-C) pass.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        pool: Callable[[], concurrent.futures.Executor],
        tracker: TrackerFactory | None = None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.is_async = inspect.iscoroutinefunction(fn)
        self._pool = pool
        self.tracker = tracker

    async def run(self, config: Config) -> Branch:
        """Run `config` now, on the caller's loop (sync functions in the pool)."""
        branch = Branch(config)
        await self._execute(branch)
        return branch

    def spawn(self, config: Config) -> Branch:
        """Start `config` in the background and return its (pending) branch at once."""
        branch = Branch(config)
        future: concurrent.futures.Future[Any]
        if self.is_async:
            future = background_loop().submit(self._execute(branch))
        else:
            future = self._pool().submit(self._execute_sync, branch)
        _track(future)
        return branch

    def _call(self, config: Config) -> Any:
        return self.fn(*self.args, config=config, **self.kwargs)

    async def _execute(self, branch: Branch) -> None:
        branch.start()
        try:
            if self.is_async:
                output = await self._call(branch.config)
            else:
                loop = asyncio.get_running_loop()
                output = await loop.run_in_executor(
                    self._pool(), functools.partial(self._call, branch.config)
                )
        except Exception as exc:
            branch.fail(exc)
        else:
            branch.succeed(output)
        if self.tracker is not None:
            await asyncio.to_thread(safely_record, self.tracker, branch)

    def _execute_sync(self, branch: Branch) -> None:
        branch.start()
        try:
            output = self._call(branch.config)
        except Exception as exc:
            branch.fail(exc)
        else:
            branch.succeed(output)
        safely_record(self.tracker, branch)


# --- strategies --------------------------------------------------------------------------------
class Strategy(Protocol):
    """Decides which configs a call runs and what the call returns."""

    name: str

    async def execute(self, runner: BranchRunner, configs: Sequence[Config]) -> Any: ...


def _result_of(branch: Branch) -> Any:
    if branch.status is BranchStatus.FAILED and branch.exception is not None:
        raise branch.exception
    return branch.output


class RoundRobin:
    """Call k runs config k mod n: spreads traffic evenly, one config per call."""

    name = "round-robin"

    def __init__(self, *, history: int = 1000) -> None:
        self._next = 0
        self._lock = threading.Lock()
        self.history: deque[Branch] = deque(maxlen=history)

    async def execute(self, runner: BranchRunner, configs: Sequence[Config]) -> Any:
        with self._lock:
            config = configs[self._next % len(configs)]
            self._next += 1
        branch = await runner.run(config)
        self.history.append(branch)
        return _result_of(branch)


class Shadow:
    """The primary config answers; every other config runs in the background, recorded only.

    `primary` is a config id or an index into the pool (default: the first config).
    """

    name = "shadow"

    def __init__(self, *, primary: str | int = 0, history: int = 1000) -> None:
        self.primary = primary
        self.primary_branches: deque[Branch] = deque(maxlen=history)
        self.shadow_branches: deque[Branch] = deque(maxlen=history)

    def _pick(self, configs: Sequence[Config]) -> Config:
        if isinstance(self.primary, int):
            if not -len(configs) <= self.primary < len(configs):
                raise ConfigError(f"shadow primary index {self.primary} is outside the pool")
            return configs[self.primary]
        for config in configs:
            if config.config_id == self.primary:
                return config
        known = ", ".join(c.config_id for c in configs)
        raise ConfigError(f"shadow primary '{self.primary}' is not in the pool ({known})")

    async def execute(self, runner: BranchRunner, configs: Sequence[Config]) -> Any:
        primary = self._pick(configs)
        for config in configs:
            if config.config_id != primary.config_id:
                self.shadow_branches.append(runner.spawn(config))
        branch = await runner.run(primary)
        self.primary_branches.append(branch)
        return _result_of(branch)

    def pending(self) -> BranchContainer:
        return BranchContainer([b for b in self.shadow_branches if not b.done])

    def branches(self) -> BranchContainer:
        """Every shadow branch so far, finished or not (check `status`)."""
        return BranchContainer(list(self.shadow_branches))

    def wait(self, timeout: float | None = None) -> BranchContainer:
        """Block until the background branches have finished (or `timeout` runs out)."""
        branches = list(self.shadow_branches)
        for branch in branches:
            branch.wait(timeout)
        return BranchContainer(branches)

    async def wait_async(self) -> BranchContainer:
        return await asyncio.to_thread(self.wait)


class MultiBranch:
    """Every config, concurrently (at most `max_concurrency` at once); returns all branches."""

    name = "multi-branch"

    def __init__(self, *, max_concurrency: int | None = None) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigError("max_concurrency must be at least 1")
        self.max_concurrency = max_concurrency

    async def execute(self, runner: BranchRunner, configs: Sequence[Config]) -> BranchContainer:
        gate = asyncio.Semaphore(self.max_concurrency or len(configs))

        async def one(config: Config) -> Branch:
            async with gate:
                return await runner.run(config)

        return BranchContainer(await asyncio.gather(*(one(c) for c in configs)))


# --- registry ------------------------------------------------------------------------------------
StrategyFactory = Callable[..., Strategy]

_registry: dict[str, StrategyFactory] = {
    RoundRobin.name: RoundRobin,
    Shadow.name: Shadow,
    MultiBranch.name: MultiBranch,
}


def register_strategy(name: str, factory: StrategyFactory, *, replace: bool = False) -> None:
    """Make `factory(**options)` available as `get_strategy(name, **options)`."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"strategy name {name!r} must be letters, digits, '-' or '_'")
    if name in _registry and not replace:
        raise ConfigError(f"strategy '{name}' is registered already (pass replace=True)")
    _registry[name] = factory


def get_strategy(name: str, **options: Any) -> Strategy:
    if name not in _registry:
        raise ConfigError(f"unknown strategy '{name}'; registered: {', '.join(list_strategies())}")
    return _registry[name](**options)


def list_strategies() -> list[str]:
    return sorted(_registry)
