from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from ml_playground.config.schema import ModelConfig, TrainConfig
from ml_playground.model.gpt import GPT
from ml_playground.train.optim import build_optimizer, learning_rate_at

CPU = torch.device("cpu")


def schedule(**overrides: object) -> TrainConfig:
    settings: dict[str, object] = {
        "learning_rate": 1e-3,
        "min_lr": 1e-4,
        "warmup_iters": 10,
        "max_iters": 100,
    }
    settings.update(overrides)
    return TrainConfig.model_validate(settings)


def tiny_model(bias: bool = True) -> GPT:
    torch.manual_seed(0)
    config = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=bias, vocab_size=40)
    return GPT(config)


@pytest.mark.parametrize("warmup", [0, 1, 10])
def test_learning_rate_is_positive_at_step_zero(warmup: int) -> None:
    config = schedule(warmup_iters=warmup, min_lr=0.0)
    assert learning_rate_at(0, config) > 0.0


def test_warmup_rises_strictly_to_the_peak() -> None:
    config = schedule()
    rates = [learning_rate_at(step, config) for step in range(config.warmup_iters + 1)]
    assert all(a < b for a, b in pairwise(rates))
    assert rates[-1] == pytest.approx(config.learning_rate)
    assert all(rate < config.learning_rate for rate in rates[:-1])


def test_cosine_decays_monotonically_to_min_lr_and_stays_there() -> None:
    config = schedule(lr_decay_iters=60)
    decay = [learning_rate_at(step, config) for step in range(10, 61)]
    assert all(a > b for a, b in pairwise(decay))
    assert decay[0] == pytest.approx(config.learning_rate)
    assert decay[-1] == pytest.approx(config.min_lr)
    # Halfway through the cosine the rate is halfway between peak and floor.
    assert learning_rate_at(35, config) == pytest.approx((config.learning_rate + config.min_lr) / 2)
    for step in (60, 61, 100, 10_000):
        assert learning_rate_at(step, config) == pytest.approx(config.min_lr)


def test_decay_ends_at_max_iters_by_default() -> None:
    config = schedule()
    assert learning_rate_at(99, config) > config.min_lr
    assert learning_rate_at(100, config) == pytest.approx(config.min_lr)


def test_schedule_never_leaves_its_bounds() -> None:
    config = schedule(warmup_iters=7, lr_decay_iters=41, max_iters=50)
    for step in range(60):
        rate = learning_rate_at(step, config)
        assert 0.0 < rate <= config.learning_rate
        if step >= config.warmup_iters:
            assert rate >= config.min_lr


def test_no_cosine_phase_when_decay_ends_where_warmup_ends() -> None:
    config = schedule(warmup_iters=10, lr_decay_iters=10)
    rates = [learning_rate_at(step, config) for step in range(30)]  # no ZeroDivisionError
    assert all(a < b for a, b in pairwise(rates[:10]))
    assert rates[10:] == [config.min_lr] * 20


def test_zero_warmup_starts_at_the_peak() -> None:
    config = schedule(warmup_iters=0)
    assert learning_rate_at(0, config) == pytest.approx(config.learning_rate)
    assert learning_rate_at(1, config) < config.learning_rate


def test_zero_warmup_and_zero_length_run_does_not_divide_by_zero() -> None:
    config = schedule(warmup_iters=0, max_iters=0)
    assert learning_rate_at(0, config) == pytest.approx(config.min_lr)


def test_weight_decay_goes_to_matrices_only() -> None:
    model = tiny_model(bias=True)
    optimizer = build_optimizer(model, schedule(weight_decay=0.1), CPU)
    decay_group, no_decay_group = optimizer.param_groups
    assert decay_group["weight_decay"] == 0.1
    assert no_decay_group["weight_decay"] == 0.0
    decayed = {id(p) for p in decay_group["params"]}
    not_decayed = {id(p) for p in no_decay_group["params"]}
    for name, param in model.named_parameters():
        if param.dim() >= 2:
            assert id(param) in decayed, name
        else:
            assert id(param) in not_decayed, name
    assert id(model.wte.weight) in decayed
    assert id(model.h[0].attn.c_attn.weight) in decayed
    assert id(model.h[0].attn.c_attn.bias) in not_decayed
    assert id(model.h[0].ln_1.weight) in not_decayed
    assert id(model.ln_f.bias) in not_decayed


@pytest.mark.parametrize("bias", [False, True])
def test_every_parameter_is_in_exactly_one_group(bias: bool) -> None:
    model = tiny_model(bias=bias)
    optimizer = build_optimizer(model, schedule(), CPU)
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert len(grouped) == len(set(grouped))
    # The tied lm_head/wte matrix is one parameter, listed once.
    assert set(grouped) == {id(p) for p in model.parameters()}


def test_frozen_parameters_are_left_out() -> None:
    model = tiny_model()
    model.wpe.weight.requires_grad_(False)
    optimizer = build_optimizer(model, schedule(), CPU)
    grouped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(model.wpe.weight) not in grouped
    assert id(model.wte.weight) in grouped


def test_optimizer_uses_the_configured_hyperparameters() -> None:
    config = schedule(learning_rate=3e-4, min_lr=0.0, beta1=0.8, beta2=0.95)
    optimizer = build_optimizer(tiny_model(), config, CPU)
    assert isinstance(optimizer, torch.optim.AdamW)
    for group in optimizer.param_groups:
        assert group["lr"] == 3e-4
        assert group["betas"] == (0.8, 0.95)


def test_a_step_with_zero_gradients_shrinks_only_decayed_parameters() -> None:
    model = tiny_model(bias=True)
    config = schedule(learning_rate=0.1, weight_decay=0.5)
    optimizer = build_optimizer(model, config, CPU)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() < 2:
                param.add_(0.5)  # biases start at 0; give them something to decay
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    factor = 1.0 - config.learning_rate * config.weight_decay
    for name, param in model.named_parameters():
        expected = before[name] * factor if param.dim() >= 2 else before[name]
        torch.testing.assert_close(param.detach(), expected, msg=name)
