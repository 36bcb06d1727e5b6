"""`@experiment`: run one function under several configs, chosen and recorded by a strategy.

    @experiment(configs=[{"temperature": 0.7}, {"temperature": 1.0}], strategy="multi-branch")
    def generate(prompt: str, *, config: Config) -> str: ...

    branches = generate("ROMEO:")       # a BranchContainer, one branch per config

The function receives the chosen `config` as a keyword argument. Async functions stay async (their
branches run on the caller's loop); sync functions stay sync (their branches run in a thread
pool, driven by a private event loop, so calling them from inside a running loop works too).
"""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

from ml_playground.errors import ConfigError
from ml_playground.variants.config import Config, load_configs
from ml_playground.variants.strategies import (
    BranchRunner,
    Strategy,
    background_loop,
    get_strategy,
)
from ml_playground.variants.tracking import TrackerFactory


class _LazyPool:
    """A thread pool created on first use and sized for the pool of configs."""

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __call__(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self.max_workers, thread_name_prefix="ml-playground-branch"
                )
            return self._pool


def experiment(
    configs: Any,
    strategy: str | Strategy = "multi-branch",
    tracker: TrackerFactory | None = None,
    *,
    max_workers: int | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a function so that each call runs under `strategy` over the config pool.

    `configs`: anything `load_configs` accepts (dicts, files, a directory, a pydantic search
    space). `strategy`: a registered name or a `Strategy` object. `tracker`: a factory giving a
    `Tracker` per finished branch (`InMemoryTrackers`, `MLflowTrackers`, `TensorBoardTrackers`).
    `max_workers`: threads for sync functions (default: one per config, at most 32).
    """
    pool_of_configs: list[Config] = load_configs(configs)
    chosen = get_strategy(strategy) if isinstance(strategy, str) else strategy
    threads = _LazyPool(max_workers or min(32, max(1, len(pool_of_configs))))

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if "config" not in inspect.signature(fn).parameters:
            raise ConfigError(f"{fn.__qualname__} must accept a `config` keyword argument")

        def runner(args: tuple[Any, ...], kwargs: dict[str, Any]) -> BranchRunner:
            if "config" in kwargs:
                raise TypeError("`config` is chosen by the experiment's strategy; don't pass it")
            return BranchRunner(fn, args, kwargs, pool=threads, tracker=tracker)

        wrapper: Callable[..., Any]
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await chosen.execute(runner(args, kwargs), pool_of_configs)

            wrapper = async_wrapper
        else:

            @functools.wraps(fn)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                return background_loop().run(chosen.execute(runner(args, kwargs), pool_of_configs))

            wrapper = sync_wrapper
        # Introspection for callers: which configs and which strategy (e.g. Shadow.wait()).
        setattr(wrapper, "configs", pool_of_configs)  # noqa: B010
        setattr(wrapper, "strategy", chosen)  # noqa: B010
        return wrapper

    return decorate
