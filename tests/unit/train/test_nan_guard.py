"""The NaN/Inf guard: a bad step is skipped, too many of them abort the run with a clear error.

NaN losses are injected with a real global forward hook that poisons the GPT's training loss on
chosen forward passes; evaluation and sampling (eval mode) are left alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.errors import TrainingError
from ml_playground.model.gpt import GPT
from ml_playground.train import checkpoint as ckpt
from ml_playground.train.callbacks import Callback, LogEvent
from ml_playground.train.loop import train

MakeConfig = Callable[..., ExperimentConfig]


class PoisonLoss:
    """Makes the GPT's loss NaN on the training forward passes numbered in `bad` (1-based)."""

    def __init__(self, bad: Callable[[int], bool]) -> None:
        self.bad = bad
        self.calls = 0
        self.poisoned = 0

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        if not isinstance(module, GPT) or not module.training:
            return None
        logits, loss = output
        if loss is None:
            return None
        self.calls += 1
        if not self.bad(self.calls):
            return None
        self.poisoned += 1
        return logits, loss * float("nan")


@pytest.fixture
def poison() -> Iterator[Callable[[Callable[[int], bool]], PoisonLoss]]:
    handles = []

    def install(bad: Callable[[int], bool]) -> PoisonLoss:
        hook = PoisonLoss(bad)
        handles.append(register_module_forward_hook(hook))
        return hook

    yield install
    for handle in handles:
        handle.remove()


class BadStepLog(Callback):
    def __init__(self) -> None:
        self.rows: list[tuple[int, float, int]] = []

    def on_log(self, event: LogEvent) -> None:
        self.rows.append((event.iter, event.loss, event.bad_steps))


def prepared(make_config: MakeConfig, workdir: Path, *overrides: str) -> ExperimentConfig:
    config = make_config(*overrides)
    prepare_dataset(config.data, workdir, config.name)
    return config


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return data


def load_gpt(directory: Path) -> GPT:
    checkpoint = ckpt.open_checkpoint(directory)
    model = GPT(checkpoint.config.model)
    ckpt.load_weights(checkpoint, model)
    return model


def test_a_single_nan_step_is_skipped(
    make_config: MakeConfig,
    workdir: Path,
    poison: Callable[[Callable[[int], bool]], PoisonLoss],
) -> None:
    config = prepared(make_config, workdir, "train.max_iters=10", "train.log_interval=1")
    hook = poison(lambda call: call == 4)  # the step at iter 3 → 4
    log = BadStepLog()
    result = train(config, workdir, callbacks=[log])

    assert hook.calls == 10
    assert hook.poisoned == 1
    summary = read_json(result.run_dir / "summary.json")
    assert summary["bad_steps"] == 1
    assert summary["iters"] == 10
    assert summary["status"] == "finished"
    # The log shows the NaN step and counts it from there on.
    by_iter = {it: (loss, bad) for it, loss, bad in log.rows}
    assert by_iter[3][1] == 0
    assert by_iter[4][1] == 1
    assert math.isnan(by_iter[4][0])
    assert by_iter[10][1] == 1
    assert all(math.isfinite(loss) for it, loss, _ in log.rows if it != 4)

    last = result.run_dir / "checkpoints" / "last"
    assert read_json(last / "state.json")["bad_steps"] == 1
    model = load_gpt(last)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    metrics = (result.run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    assert all(json.loads(row)["val_loss"] < 10 for row in metrics)


def test_persistent_nan_aborts_naming_max_bad_steps(
    make_config: MakeConfig,
    workdir: Path,
    poison: Callable[[Callable[[int], bool]], PoisonLoss],
) -> None:
    config = prepared(
        make_config,
        workdir,
        "train.max_iters=20",
        "train.max_bad_steps=2",
        "train.checkpoint_interval=2",
    )
    hook = poison(lambda call: call >= 4)  # iters 0-2 train normally, then every loss is NaN
    run_dir = workdir / "runs" / config.name / config.train.run_name

    with pytest.raises(
        TrainingError, match=r"3 steps \(last at iter 5\), more than train\.max_bad_steps=2"
    ):
        train(config, workdir)
    assert hook.poisoned == 3  # max_bad_steps + 1 bad steps, then it stopped
    assert not (run_dir / "summary.json").exists()

    # `last` was written at iter 2 before the trouble, then at 4 after one skipped step (which
    # left the weights untouched); it opens, and its weights are finite.
    last = run_dir / "checkpoints" / "last"
    state = read_json(last / "state.json")
    assert state["iter"] == 4
    assert state["bad_steps"] == 1
    model = load_gpt(last)
    assert all(torch.isfinite(p).all() for p in model.parameters())
