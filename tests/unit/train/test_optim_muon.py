"""Muon + AdamW (`MuonAdamW`), the device-side skip of bad steps, and the WSD schedule."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from ml_playground.config.schema import ModelConfig, TrainConfig
from ml_playground.model.gpt import GPT
from ml_playground.train.optim import (
    MuonAdamW,
    build_optimizer,
    learning_rate_at,
    set_learning_rate,
    skips_on_device,
    step_unless_bad,
    zeropower_via_newtonschulz,
)

CPU = torch.device("cpu")


def train_config(**overrides: object) -> TrainConfig:
    settings: dict[str, object] = {
        "optimizer": "muon",
        "learning_rate": 1e-3,
        "min_lr": 1e-4,
        "warmup_iters": 10,
        "max_iters": 100,
    }
    settings.update(overrides)
    return TrainConfig.model_validate(settings)


def tiny_gpt(seed: int = 0, **overrides: object) -> GPT:
    torch.manual_seed(seed)
    settings: dict[str, object] = {
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "block_size": 16,
        "bias": True,
        "vocab_size": 40,
    }
    settings.update(overrides)
    return GPT(ModelConfig.model_validate(settings))


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 40, (4, 17), generator=generator)
    return data[:, :-1], data[:, 1:]


def loss_of(model: GPT, seed: int = 1) -> torch.Tensor:
    _, loss = model(*batch(seed))
    assert loss is not None
    return loss


# --- Newton–Schulz ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(32, 96), (96, 32), (48, 48)])
def test_newton_schulz_orthogonalises_with_the_same_shape(shape: tuple[int, int]) -> None:
    matrix = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    ortho = zeropower_via_newtonschulz(matrix).float()
    assert ortho.shape == matrix.shape
    singular = torch.linalg.svdvals(ortho)
    # Not exactly 1: the quintic's fast coefficients leave them in roughly [0.7, 1.2].
    assert float(singular.min()) > 0.5
    assert float(singular.max()) < 1.3
    # Same singular vectors as the input: U^T O V is (nearly) diagonal and positive.
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    inner = u.T @ ortho @ vh.T
    off_diagonal = inner - torch.diag(torch.diagonal(inner))
    assert float(off_diagonal.abs().max()) < 0.1
    assert bool((torch.diagonal(inner) > 0.5).all())


def test_muon_step_matches_torch_optim_muon() -> None:
    torch.manual_seed(0)
    weight = torch.randn(24, 16)
    grads = [torch.randn(24, 16) for _ in range(3)]
    ours_param = torch.nn.Parameter(weight.clone())
    theirs_param = torch.nn.Parameter(weight.clone())
    ours = MuonAdamW(
        [{"params": [ours_param], "use_muon": True, "momentum": 0.9, "weight_decay": 0.01}],
        lr=0.02,
    )
    theirs = torch.optim.Muon([theirs_param], lr=0.02, momentum=0.9, weight_decay=0.01)
    for grad in grads:  # several steps: momentum buffers must agree too
        ours_param.grad, theirs_param.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
    # torch orthogonalises in bfloat16 everywhere, we do in float32 off CUDA: the two updates
    # agree to bfloat16 rounding, far below the size of the update itself.
    moved = float((ours_param.detach() - weight).abs().max())
    gap = float((ours_param.detach() - theirs_param.detach()).abs().max())
    assert moved > 0.01
    assert gap < 0.05 * moved  # measured: ~0.017; without Nesterov momentum it is ~0.26


# --- parameter groups ---------------------------------------------------------------------------
@pytest.mark.parametrize("tie", [True, False])
def test_muon_takes_hidden_matrices_and_adamw_the_rest(tie: bool) -> None:
    model = tiny_gpt(tie_embeddings=tie)
    optimizer = build_optimizer(model, train_config(), CPU)
    assert isinstance(optimizer, MuonAdamW)
    muon = {id(p) for g in optimizer.param_groups if g["use_muon"] for p in g["params"]}
    adam = {id(p) for g in optimizer.param_groups if not g["use_muon"] for p in g["params"]}
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == len(list(model.parameters()))
    for block in model.h:
        for linear in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            assert id(linear.weight) in muon
            assert id(linear.bias) in adam
    assert model.wpe is not None
    for param in (model.wte.weight, model.wpe.weight, model.lm_head.weight, model.ln_f.weight):
        assert id(param) in adam


def test_group_learning_rates_follow_the_schedule_with_muons_own_peak() -> None:
    config = train_config(learning_rate=1e-3, muon_learning_rate=0.05)
    optimizer = build_optimizer(tiny_gpt(), config, CPU)
    set_learning_rate(optimizer, 5e-4)  # half the peak
    for group in optimizer.param_groups:
        expected = 0.025 if group["use_muon"] else 5e-4
        assert group["lr"] == pytest.approx(expected)


def test_a_few_muon_steps_lower_the_loss() -> None:
    model = tiny_gpt()
    optimizer = build_optimizer(model, train_config(), CPU)
    set_learning_rate(optimizer, 1e-2)
    first = float(loss_of(model).detach())
    for _ in range(5):
        loss_of(model).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert float(loss_of(model).detach()) < first - 0.1


# --- skipping bad steps on the device -----------------------------------------------------------
def snapshot(model: GPT, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    tensors = [p.detach().clone() for p in model.parameters()]
    for state in optimizer.state.values():
        tensors += [v.detach().clone() for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


def fused_adamw(model: GPT) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)


@pytest.mark.parametrize(
    "make",
    [lambda m: build_optimizer(m, train_config(), CPU), fused_adamw],
    ids=["muon", "fused-adamw"],
)
def test_a_bad_flag_leaves_weights_and_state_untouched(make: object) -> None:
    model = tiny_gpt()
    optimizer = make(model)  # type: ignore[operator]
    assert skips_on_device(optimizer)
    loss_of(model).backward()
    optimizer.step()  # state exists now, so "untouched" covers moments and step counts
    optimizer.zero_grad()
    loss_of(model, seed=2).backward()
    before = snapshot(model, optimizer)
    step_unless_bad(optimizer, torch.ones(()))
    after = snapshot(model, optimizer)
    assert len(after) == len(before)
    for old, new in zip(before, after, strict=True):
        assert torch.equal(old, new)
    assert not hasattr(optimizer, "found_inf")
    step_unless_bad(optimizer, torch.zeros(()))  # a good flag steps as usual
    assert not all(
        torch.equal(old, new) for old, new in zip(before, snapshot(model, optimizer), strict=True)
    )


def test_a_good_flag_steps_exactly_like_a_plain_step() -> None:
    plain, flagged = tiny_gpt(), tiny_gpt()
    plain_opt = build_optimizer(plain, train_config(), CPU)
    flagged_opt = build_optimizer(flagged, train_config(), CPU)
    for seed in (1, 2, 3):
        loss_of(plain, seed).backward()
        loss_of(flagged, seed).backward()
        plain_opt.step()
        step_unless_bad(flagged_opt, torch.zeros(()))
        plain_opt.zero_grad()
        flagged_opt.zero_grad()
    for a, b in zip(plain.parameters(), flagged.parameters(), strict=True):
        assert torch.equal(a, b)


def test_unfused_adamw_is_not_skipped_on_device() -> None:
    assert not skips_on_device(torch.optim.AdamW(tiny_gpt().parameters(), fused=False))


def test_muon_state_round_trips_through_state_dict() -> None:
    """Save after 2 steps, load into a fresh optimizer, 2 more: the same as 4 straight."""
    straight, resumed = tiny_gpt(), tiny_gpt()
    config = train_config()
    straight_opt = build_optimizer(straight, config, CPU)
    first_opt = build_optimizer(resumed, config, CPU)
    for seed in (1, 2):
        loss_of(resumed, seed).backward()
        first_opt.step()
        first_opt.zero_grad()
    saved = first_opt.state_dict()
    resumed_opt = build_optimizer(resumed, config, CPU)
    resumed_opt.load_state_dict(saved)
    for seed in (3, 4):
        loss_of(resumed, seed).backward()
        resumed_opt.step()
        resumed_opt.zero_grad()
    for seed in (1, 2, 3, 4):
        loss_of(straight, seed).backward()
        straight_opt.step()
        straight_opt.zero_grad()
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


# --- warmup-stable-decay ------------------------------------------------------------------------
def test_wsd_holds_the_peak_then_decays_linearly_to_min_lr() -> None:
    config = train_config(lr_schedule="wsd", wsd_decay_fraction=0.2)  # decay over 80..100
    peak, floor = config.learning_rate, config.min_lr
    assert learning_rate_at(0, config) == pytest.approx(peak / 11)
    assert learning_rate_at(10, config) == pytest.approx(peak)
    assert learning_rate_at(50, config) == pytest.approx(peak)
    assert learning_rate_at(80, config) == pytest.approx(peak)
    assert learning_rate_at(90, config) == pytest.approx((peak + floor) / 2)
    assert learning_rate_at(95, config) == pytest.approx(peak + 0.75 * (floor - peak))
    assert learning_rate_at(100, config) == pytest.approx(floor)
    assert learning_rate_at(1000, config) == pytest.approx(floor)
    decay = [learning_rate_at(step, config) for step in range(80, 101)]
    assert all(a > b for a, b in pairwise(decay))


def test_wsd_respects_lr_decay_iters_and_never_divides_by_zero() -> None:
    config = train_config(lr_schedule="wsd", lr_decay_iters=50, wsd_decay_fraction=0.4)
    assert learning_rate_at(29, config) == pytest.approx(config.learning_rate)
    assert learning_rate_at(40, config) == pytest.approx((config.learning_rate + config.min_lr) / 2)
    assert learning_rate_at(50, config) == pytest.approx(config.min_lr)
    tiny = train_config(lr_schedule="wsd", warmup_iters=0, max_iters=2, wsd_decay_fraction=0.1)
    assert [learning_rate_at(s, tiny) for s in range(3)] == [
        pytest.approx(tiny.learning_rate),
        pytest.approx(tiny.learning_rate),
        pytest.approx(tiny.min_lr),
    ]
