"""Strategy semantics: what each returns, what runs in the background, failure isolation, limits."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ml_playground.errors import ConfigError
from ml_playground.variants.branch import BranchContainer, BranchStatus
from ml_playground.variants.config import Config
from ml_playground.variants.experiment import experiment
from ml_playground.variants.strategies import (
    MultiBranch,
    RoundRobin,
    Shadow,
    get_strategy,
    list_strategies,
    register_strategy,
)

POOL = [{"name": "a", "x": 1}, {"name": "b", "x": 2}, {"name": "c", "x": 3}]


def test_round_robin_cycles_and_returns_plain_results() -> None:
    strategy = RoundRobin()

    @experiment(POOL, strategy=strategy)
    def double(*, config: Config) -> int:
        return int(config["x"]) * 2

    assert [double() for _ in range(5)] == [2, 4, 6, 2, 4]
    assert [b.config["name"] for b in strategy.history] == ["a", "b", "c", "a", "b"]


def test_round_robin_reraises_the_branch_failure() -> None:
    @experiment([{"x": 0}], strategy="round-robin")
    def invert(*, config: Config) -> float:
        return 1 / config["x"]

    with pytest.raises(ZeroDivisionError):
        invert()


def test_multi_branch_returns_every_branch_in_config_order_and_isolates_failures() -> None:
    @experiment(POOL, strategy="multi-branch")
    def flaky(scale: int, *, config: Config) -> int:
        if config["name"] == "b":
            raise RuntimeError("branch b broke")
        return int(config["x"]) * scale

    branches = flaky(10)
    assert isinstance(branches, BranchContainer)
    assert [b.config["name"] for b in branches] == ["a", "b", "c"]
    assert [b.output for b in branches.successful()] == [10, 30]
    (failed,) = branches.failed()
    assert failed.exception_info is not None
    assert "branch b broke" in failed.exception_info.traceback


@pytest.mark.parametrize("use_async", [False, True])
def test_multi_branch_respects_the_concurrency_limit(use_async: bool) -> None:
    pool = [{"i": i} for i in range(6)]
    lock = threading.Lock()
    running = 0
    peak = 0

    def enter() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)

    def leave() -> None:
        nonlocal running
        with lock:
            running -= 1

    if use_async:

        @experiment(pool, strategy=MultiBranch(max_concurrency=2))
        async def work(*, config: Config) -> int:
            enter()
            await asyncio.sleep(0.05)
            leave()
            return int(config["i"])

        branches = asyncio.run(work())
    else:

        @experiment(pool, strategy=MultiBranch(max_concurrency=2))
        def work(*, config: Config) -> int:
            enter()
            time.sleep(0.05)
            leave()
            return int(config["i"])

        branches = work()
    assert [b.output for b in branches] == list(range(6))
    assert peak == 2


def test_multi_branch_runs_concurrently() -> None:
    barrier = threading.Barrier(3, timeout=5)

    @experiment(POOL, strategy="multi-branch")
    def meet(*, config: Config) -> str:
        barrier.wait()  # deadlocks (times out) unless all three run at once
        return str(config["name"])

    assert [b.status for b in meet()] == [BranchStatus.SUCCESS] * 3


def test_shadow_returns_primary_at_once_and_finishes_others_in_background() -> None:
    release = threading.Event()
    strategy = Shadow(primary=0)

    @experiment(POOL, strategy=strategy)
    def answer(*, config: Config) -> str:
        if config["name"] != "a":
            assert release.wait(5)
            if config["name"] == "c":
                raise ValueError("shadow c failed")
        return f"answer {config['name']}"

    assert answer() == "answer a"  # returned while b and c are still blocked
    pending = strategy.pending()
    assert sorted(b.config["name"] for b in pending) == ["b", "c"]
    assert all(b.status is BranchStatus.PENDING for b in pending)
    release.set()
    done = strategy.wait(timeout=5)
    assert {b.config["name"]: b.status for b in done} == {
        "b": BranchStatus.SUCCESS,
        "c": BranchStatus.FAILED,
    }
    assert done.by_config_id(done[0].config_id).output == "answer b"
    assert len(strategy.pending()) == 0


def test_shadow_primary_by_config_id_and_async() -> None:
    pool = [Config({"x": 1}, config_id="old"), Config({"x": 2}, config_id="new")]
    strategy = Shadow(primary="new")

    @experiment(pool, strategy=strategy)
    async def value(*, config: Config) -> int:
        await asyncio.sleep(0.01)
        return int(config["x"])

    assert asyncio.run(value()) == 2
    (shadow,) = strategy.wait(timeout=5)
    assert shadow.config_id == "old"
    assert shadow.output == 1
    with pytest.raises(ConfigError, match="not in the pool"):
        asyncio.run(experiment(pool, strategy=Shadow(primary="gone"))(value.__wrapped__)())


def test_shadow_branches_are_not_lost_at_interpreter_exit(tmp_path: Path) -> None:
    marker = tmp_path / "shadow.txt"
    script = textwrap.dedent(
        f"""
        import time
        from ml_playground.variants.experiment import experiment

        @experiment([{{"n": "primary"}}, {{"n": "shadow"}}], strategy="shadow")
        def act(*, config):
            if config["n"] == "shadow":
                time.sleep(0.5)
                open({str(marker)!r}, "w").write("recorded")
            return 1

        assert act() == 1
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert marker.read_text() == "recorded"


def test_sync_experiment_works_inside_a_running_loop() -> None:
    @experiment([{"x": 1}], strategy="round-robin")
    def one(*, config: Config) -> Any:
        return config["x"]

    async def caller() -> Any:
        return one()

    assert asyncio.run(caller()) == 1


def test_function_must_take_config_and_caller_must_not_pass_it() -> None:
    with pytest.raises(ConfigError, match="must accept a `config`"):
        experiment([{"x": 1}])(lambda: 1)

    @experiment([{"x": 1}], strategy="round-robin")
    def f(*, config: Config) -> int:
        return 1

    with pytest.raises(TypeError, match="chosen by the experiment"):
        f(config=Config({}))


def test_registry_builtins_custom_and_errors() -> None:
    assert {"round-robin", "shadow", "multi-branch"} <= set(list_strategies())
    assert isinstance(get_strategy("multi-branch", max_concurrency=3), MultiBranch)

    class FirstOnly:
        name = "first-only-test"

        async def execute(self, runner: Any, configs: Any) -> Any:
            return (await runner.run(configs[0])).output

    register_strategy("first-only-test", FirstOnly)
    with pytest.raises(ConfigError, match="registered already"):
        register_strategy("first-only-test", FirstOnly)

    @experiment(POOL, strategy="first-only-test")
    def name(*, config: Config) -> str:
        return str(config["name"])

    assert name() == "a"
    with pytest.raises(ConfigError, match=r"unknown strategy 'nope'; registered: .*shadow"):
        get_strategy("nope")
