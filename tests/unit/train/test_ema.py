"""The weights' moving average: its math, the swap used for evaluation, and EMA in real runs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

from conftest import TINY_EXPERIMENT, write_corpus
from ml_playground.config.loading import resolve_config
from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.errors import CheckpointError
from ml_playground.generate.service import load_for_inference
from ml_playground.model.gpt import GPT
from ml_playground.train.ema import EMA
from ml_playground.train.loop import TrainResult, train

MakeConfig = Callable[..., ExperimentConfig]
# A fixed decay horizon, so a run stopped at 10 and resumed to 20 follows the 20-iter schedule.
EMA_RUN = ("train.ema_decay=0.9", "train.lr_decay_iters=20")


def linear(seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(3, 2)


def set_params(model: nn.Module, values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for param, value in zip(model.parameters(), values, strict=True):
            param.copy_(value)


def clone_params(model: nn.Module) -> list[torch.Tensor]:
    return [param.detach().clone() for param in model.parameters()]


# --- the math ------------------------------------------------------------------------------------
def test_first_updates_lerp_with_the_warmed_up_decay() -> None:
    model = linear(0)
    start = clone_params(model)
    ema = EMA(model, decay=0.9)
    assert ema.updates == 0
    assert ema.current_decay() == pytest.approx(1 / 10)  # (1 + 0) / (10 + 0) < 0.9

    first = [torch.randn_like(p) for p in start]
    set_params(model, first)
    ema.update()
    # shadow ← shadow + (1 - decay) * (param - shadow), with decay = 0.1 at the first update
    for shadow, s0, p1 in zip(ema.shadow, start, first, strict=True):
        assert torch.allclose(shadow, s0 + 0.9 * (p1 - s0), atol=1e-6)
    assert ema.updates == 1
    assert ema.current_decay() == pytest.approx(2 / 11)

    second = [torch.randn_like(p) for p in start]
    set_params(model, second)
    after_first = [s.clone() for s in ema.shadow]
    ema.update()
    for shadow, s1, p2 in zip(ema.shadow, after_first, second, strict=True):
        assert torch.allclose(shadow, s1 + (1 - 2 / 11) * (p2 - s1), atol=1e-6)


def test_decay_is_capped_at_the_configured_value() -> None:
    ema = EMA(linear(0), decay=0.5)
    for _ in range(50):
        ema.update()
    assert ema.current_decay() == 0.5


def test_constant_weights_pull_the_average_to_them() -> None:
    model = linear(0)
    ema = EMA(model, decay=0.9)
    target = [torch.full_like(p, 3.0) for p in model.parameters()]
    set_params(model, target)
    assert not torch.allclose(ema.shadow[0], target[0])
    for _ in range(300):
        ema.update()
    for shadow, want in zip(ema.shadow, target, strict=True):
        assert torch.allclose(shadow, want, atol=1e-5)


def test_the_shadow_is_float32_and_independent_of_the_parameters() -> None:
    model = linear(0)
    ema = EMA(model, decay=0.9)
    before = [s.clone() for s in ema.shadow]
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)  # changing the weights does not change the average until update()
    for shadow, old in zip(ema.shadow, before, strict=True):
        assert shadow.dtype == torch.float32
        assert torch.equal(shadow, old)


# --- swapping the average in ---------------------------------------------------------------------
def test_swapped_in_runs_the_average_and_restores_the_raw_weights() -> None:
    model = linear(0)
    ema = EMA(model, decay=0.9)
    set_params(model, [torch.randn_like(p) for p in model.parameters()])
    ema.update()
    raw = clone_params(model)
    x = torch.randn(4, 3)
    raw_out = model(x)

    with ema.swapped_in():
        for param, shadow in zip(model.parameters(), ema.shadow, strict=True):
            assert torch.equal(param, shadow)
        assert not torch.allclose(model(x), raw_out)
    for param, saved in zip(model.parameters(), raw, strict=True):
        assert torch.equal(param, saved)
    assert torch.equal(model(x), raw_out)


def test_swapped_in_restores_the_raw_weights_after_an_exception() -> None:
    model = linear(0)
    ema = EMA(model, decay=0.9)
    set_params(model, [torch.randn_like(p) for p in model.parameters()])
    raw = clone_params(model)
    seen: list[torch.Tensor] = []

    def evaluate_and_fail() -> None:
        with ema.swapped_in():
            seen.append(next(model.parameters()).detach().clone())
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match=r"boom"):
        evaluate_and_fail()
    assert torch.equal(seen[0], ema.shadow[0])  # the average was in place when it failed
    for param, saved in zip(model.parameters(), raw, strict=True):
        assert torch.equal(param, saved)


# --- state ---------------------------------------------------------------------------------------
def test_state_dict_round_trip() -> None:
    source = linear(0)
    ema = EMA(source, decay=0.9)
    set_params(source, [torch.randn_like(p) for p in source.parameters()])
    for _ in range(3):
        ema.update()
    state = ema.state_dict()
    assert set(state) == {"weight", "bias"}

    other = EMA(linear(1), decay=0.9)
    assert not torch.equal(other.shadow[0], ema.shadow[0])
    other.load_state_dict(state, ema.updates)
    assert other.updates == 3
    assert other.current_decay() == ema.current_decay()
    for mine, theirs in zip(other.shadow, ema.shadow, strict=True):
        assert torch.equal(mine, theirs)

    # state_dict hands out copies: changing them leaves the average alone.
    state["weight"].add_(1.0)
    assert not torch.equal(state["weight"], ema.shadow[0])


def test_load_state_dict_names_missing_tensors() -> None:
    ema = EMA(linear(0), decay=0.9)
    with pytest.raises(KeyError, match=r"bias"):
        ema.load_state_dict({"weight": torch.zeros(2, 3)}, 1)


# --- EMA in real runs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalForward:
    """One forward pass the loop ran in eval mode with targets: an evaluation batch."""

    params: dict[str, torch.Tensor]
    inputs: torch.Tensor
    targets: torch.Tensor
    loss: float


class RecordEvals:
    """A global forward hook that records what the GPT saw and scored during evaluation."""

    def __init__(self) -> None:
        self.calls: list[EvalForward] = []

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not isinstance(module, GPT) or module.training or len(args) != 2:
            return
        _, loss = output
        params = {name: p.detach().clone() for name, p in module.named_parameters()}
        self.calls.append(EvalForward(params, args[0].clone(), args[1].clone(), float(loss)))


@dataclass(frozen=True)
class EmaRun:
    config: ExperimentConfig
    workdir: Path
    result: TrainResult
    evals: list[EvalForward]


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory: pytest.TempPathFactory) -> EmaRun:
    """One 20-iteration tiny run with train.ema_decay=0.9, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("ema")
    corpus = write_corpus(root / "corpus.txt")
    experiment = root / "tiny.toml"
    experiment.write_text(TINY_EXPERIMENT.format(corpus=corpus.as_posix()), encoding="utf-8")
    config = resolve_config(str(experiment), [*EMA_RUN, "train.max_iters=20"])
    workdir = root / "work"
    workdir.mkdir()
    prepare_dataset(config.data, workdir, config.name)
    recorder = RecordEvals()
    handle = register_module_forward_hook(recorder)
    try:
        result = train(config, workdir)
    finally:
        handle.remove()
    return EmaRun(config, workdir, result, recorder.calls)


def embedding(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """The tied token embedding, under whichever of its two names safetensors stored it."""
    return weights["wte.weight"] if "wte.weight" in weights else weights["lm_head.weight"]


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line) for line in (run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    ]


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return data


def test_checkpoints_hold_the_average(ema_run: EmaRun) -> None:
    checkpoints = ema_run.result.run_dir / "checkpoints"
    for kind in ("last", "best"):
        ema = load_file(str(checkpoints / kind / "ema.safetensors"))
        raw = load_file(str(checkpoints / kind / "model.safetensors"))
        model = GPT(
            ema_run.config.model.model_copy(update={"vocab_size": ema["wte.weight"].shape[0]})
        )
        # One tensor per parameter (tied lm_head/wte stored once), float32, not the raw weights.
        assert set(ema) == {name for name, _ in model.named_parameters()}
        assert all(t.dtype == torch.float32 for t in ema.values())
        assert not torch.equal(ema["wte.weight"], embedding(raw))
        assert not torch.equal(ema["wpe.weight"], raw["wpe.weight"])
    state = read_json(checkpoints / "last" / "state.json")
    assert state["ema_updates"] == 20


def test_evaluation_scores_the_average(ema_run: EmaRun) -> None:
    rows = read_metrics(ema_run.result.run_dir)
    assert [row["iter"] for row in rows] == [0, 10, 20]
    eval_iters = ema_run.config.train.eval_iters
    # Each eval scores `eval_iters` train batches, then `eval_iters` val batches.
    assert len(ema_run.evals) == 3 * 2 * eval_iters
    final_val = ema_run.evals[-eval_iters:]
    last = ema_run.result.run_dir / "checkpoints" / "last"
    ema = load_file(str(last / "ema.safetensors"))

    # The model the loop evaluated at iter 20 held the averaged weights...
    for record in ema_run.evals[-2 * eval_iters :]:
        assert record.params.keys() == ema.keys()
        for name, tensor in ema.items():
            assert torch.equal(record.params[name], tensor), name
    # ...and the logged val loss is their loss on those batches.
    mean = sum(record.loss for record in final_val) / eval_iters
    assert rows[-1]["val_loss"] == pytest.approx(mean, rel=1e-6)

    # A model loaded with the EMA weights scores those batches the same; the raw weights do not.
    averaged = load_for_inference(last, "cpu", weights="ema").model
    raw = load_for_inference(last, "cpu", weights="model").model
    with torch.no_grad():
        for record in final_val:
            _, ema_loss = averaged(record.inputs, record.targets)
            _, raw_loss = raw(record.inputs, record.targets)
            assert ema_loss is not None
            assert raw_loss is not None
            assert float(ema_loss) == pytest.approx(record.loss, rel=1e-6)
            assert abs(float(raw_loss) - record.loss) > 1e-3
    # The swap was undone: training went on with (and `last` saved) the raw weights.
    assert not torch.equal(raw.wpe.weight.detach(), ema["wpe.weight"])


def test_load_for_inference_loads_the_average(ema_run: EmaRun, tmp_path: Path) -> None:
    last = ema_run.result.run_dir / "checkpoints" / "last"
    ema = load_file(str(last / "ema.safetensors"))
    raw = load_file(str(last / "model.safetensors"))

    loaded = load_for_inference(last, "cpu", weights="ema")
    params = dict(loaded.model.named_parameters())
    assert params.keys() == ema.keys()
    for name, tensor in ema.items():
        assert torch.equal(params[name].detach(), tensor), name
    assert loaded.model.lm_head.weight is loaded.model.wte.weight

    plain = load_for_inference(last, "cpu", weights="model")
    assert torch.equal(plain.model.wte.weight.detach(), embedding(raw))
    assert not torch.equal(plain.model.wte.weight.detach(), ema["wte.weight"])

    # A checkpoint without the average says which setting produces one.
    without = tmp_path / "no-ema"
    shutil.copytree(last, without)
    (without / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no EMA weights; train with train\.ema_decay"):
        load_for_inference(without, "cpu", weights="ema")
    assert torch.equal(
        load_for_inference(without, "cpu", weights="model").model.wte.weight.detach(),
        embedding(raw),
    )


def test_resume_with_ema_reproduces_the_straight_run(
    ema_run: EmaRun, make_config: MakeConfig, workdir: Path
) -> None:
    half = make_config(*EMA_RUN, "train.max_iters=10")
    prepare_dataset(half.data, workdir, half.name)
    assert train(half, workdir).summary["iters"] == 10
    assert read_json(workdir / "runs/tiny/main/checkpoints/last/state.json")["ema_updates"] == 10
    resumed = train(make_config(*EMA_RUN, "train.max_iters=20"), workdir)
    assert resumed.summary["iters"] == 20

    straight_rows = read_metrics(ema_run.result.run_dir)
    resumed_rows = read_metrics(resumed.run_dir)
    assert [row["iter"] for row in resumed_rows] == [0, 10, 20]
    for want, have in zip(straight_rows, resumed_rows, strict=True):
        for key in ("train_loss", "val_loss", "lr"):
            assert have[key] == want[key], (want["iter"], key)

    for name in ("ema.safetensors", "model.safetensors"):
        want = load_file(str(ema_run.result.run_dir / "checkpoints" / "last" / name))
        have = load_file(str(resumed.run_dir / "checkpoints" / "last" / name))
        assert want.keys() == have.keys()
        for key in want:
            assert torch.equal(want[key], have[key]), (name, key)


def test_resuming_a_run_without_ema_with_ema_is_refused(
    make_config: MakeConfig, workdir: Path
) -> None:
    config = make_config("train.max_iters=2", "train.eval_interval=2")
    prepare_dataset(config.data, workdir, config.name)
    train(config, workdir)
    with pytest.raises(CheckpointError, match=r"no EMA weights but train\.ema_decay is set"):
        train(make_config("train.max_iters=4", "train.ema_decay=0.9"), workdir)
