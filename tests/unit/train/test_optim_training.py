"""The new train options through the real loop: Muon, WSD, activation checkpointing, the
device-side NaN guard, peak memory in summary.json."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.errors import TrainingError
from ml_playground.model.gpt import GPT
from ml_playground.train.callbacks import Callback, LogEvent
from ml_playground.train.loop import train

MakeConfig = Callable[..., ExperimentConfig]
# Every option that changes the training math at once, on a fixed decay horizon.
LEVERS = (
    "train.optimizer='muon'",
    "train.lr_schedule='wsd'",
    "train.lr_decay_iters=20",
    "model.pos_embedding='rope'",
    "model.qk_norm=true",
    "model.mlp_activation='relu2'",
    "model.tie_embeddings=false",
    "model.vocab_multiple=64",
    "model.dropout=0.1",
)


def prepared(make_config: MakeConfig, workdir: Path, *overrides: str) -> ExperimentConfig:
    config = make_config(*overrides)
    prepare_dataset(config.data, workdir, config.name)
    return config


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines]


def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))


def subdir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


def test_resume_with_muon_and_wsd_reproduces_the_straight_run(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    straight_dir, resumed_dir = subdir(tmp_path, "straight"), subdir(tmp_path, "resumed")
    straight = train(
        prepared(make_config, straight_dir, *LEVERS, "train.max_iters=20"), straight_dir
    )
    half = train(prepared(make_config, resumed_dir, *LEVERS, "train.max_iters=10"), resumed_dir)
    assert half.summary["iters"] == 10
    resumed = train(make_config(*LEVERS, "train.max_iters=20"), resumed_dir)

    want, got = read_metrics(straight.run_dir), read_metrics(resumed.run_dir)
    assert [row["iter"] for row in got] == [0, 10, 20]
    for a, b in zip(want, got, strict=True):
        assert (a["train_loss"], a["val_loss"], a["lr"]) == (
            b["train_loss"],
            b["val_loss"],
            b["lr"],
        )
    expected, actual = last_weights(straight.run_dir), last_weights(resumed.run_dir)
    assert expected.keys() == actual.keys()
    assert "lm_head.weight" in expected
    assert "wte.weight" in expected
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    # Training moved: the last eval is well below the first.
    assert got[-1]["val_loss"] < got[0]["val_loss"] - 0.3


def test_activation_checkpointing_trains_the_same_run(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    plain_dir, ckpt_dir = subdir(tmp_path, "plain"), subdir(tmp_path, "ckpt")
    overrides = ("train.max_iters=10", "model.dropout=0.1")
    plain = train(prepared(make_config, plain_dir, *overrides), plain_dir)
    checkpointed = train(
        prepared(make_config, ckpt_dir, *overrides, "train.activation_checkpointing=true"),
        ckpt_dir,
    )

    def losses(run_dir: Path) -> list[tuple[float, float]]:
        return [(row["train_loss"], row["val_loss"]) for row in read_metrics(run_dir)]

    assert losses(checkpointed.run_dir) == losses(plain.run_dir)
    for key, tensor in last_weights(plain.run_dir).items():
        assert torch.equal(tensor, last_weights(checkpointed.run_dir)[key]), key


def test_summary_records_peak_memory(make_config: MakeConfig, workdir: Path) -> None:
    result = train(prepared(make_config, workdir, "train.max_iters=2"), workdir)
    summary = json.loads((result.run_dir / "summary.json").read_text("utf-8"))
    # On the CPU: the process's peak resident set, which holds at least torch itself.
    assert summary["peak_memory_mb"] > 50


# --- the NaN guard on the device-side path (Muon skips bad steps without a host sync) ----------
class PoisonLoss:
    """Makes the GPT's training loss NaN on the forward passes numbered in `bad` (1-based)."""

    def __init__(self, bad: Callable[[int], bool]) -> None:
        self.bad = bad
        self.calls = 0
        self.poisoned = 0

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        if not isinstance(module, GPT) or not module.training or output[1] is None:
            return None
        self.calls += 1
        if not self.bad(self.calls):
            return None
        self.poisoned += 1
        return output[0], output[1] * float("nan")


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


class Log(Callback):
    def __init__(self) -> None:
        self.rows: dict[int, LogEvent] = {}

    def on_log(self, event: LogEvent) -> None:
        self.rows[event.iter] = event


def test_device_side_guard_skips_a_nan_step_exactly(
    make_config: MakeConfig,
    tmp_path: Path,
    poison: Callable[[Callable[[int], bool]], PoisonLoss],
) -> None:
    """The NaN step is skipped on the device, counted at the next log, and the run goes on."""
    overrides = ("train.optimizer='muon'", "train.max_iters=6", "train.log_interval=1")
    poisoned_dir = subdir(tmp_path, "poisoned")
    hook = poison(lambda call: call == 4)  # the step from iter 3 to 4
    log = Log()
    result = train(prepared(make_config, poisoned_dir, *overrides), poisoned_dir, callbacks=[log])
    assert hook.poisoned == 1
    assert result.summary["bad_steps"] == 1
    assert [log.rows[i].bad_steps for i in range(1, 7)] == [0, 0, 0, 1, 1, 1]
    assert math.isnan(log.rows[4].loss)
    assert all(math.isfinite(log.rows[i].loss) for i in (1, 2, 3, 5, 6))
    assert log.rows[4].grad_norm == log.rows[3].grad_norm  # the last good step's norm
    weights = last_weights(result.run_dir)
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())


def test_device_side_guard_aborts_past_max_bad_steps(
    make_config: MakeConfig,
    workdir: Path,
    poison: Callable[[Callable[[int], bool]], PoisonLoss],
) -> None:
    config = prepared(
        make_config,
        workdir,
        "train.optimizer='muon'",
        "train.max_iters=20",
        "train.max_bad_steps=2",
        "train.checkpoint_interval=2",
    )
    hook = poison(lambda call: call >= 4)
    with pytest.raises(
        TrainingError, match=r"3 steps \(last at iter 5\), more than train\.max_bad_steps=2"
    ):
        train(config, workdir)
    # Checked when the host next logs or saves (iter 6 here), before that save.
    assert hook.poisoned == 3
    state = json.loads(
        (workdir / "runs" / config.name / "main" / "checkpoints" / "last" / "state.json").read_text(
            "utf-8"
        )
    )
    assert (state["iter"], state["bad_steps"]) == (4, 1)
