"""Optimizers (AdamW, or Muon + AdamW) and the learning-rate schedules (cosine, WSD).

- `build_optimizer`: AdamW with GPT-style decay groups (fused kernel on CUDA), or `MuonAdamW`.
- `set_learning_rate`: one scheduled rate for every group (Muon's groups keep their own scale).
- `learning_rate_at`: warmup, then cosine decay or warmup-stable-decay.
- `step_unless_bad`: `optimizer.step()` that a device-side NaN flag turns into a no-op without a
  host sync, where the optimizer supports it (`skips_on_device`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.adam import adam

from ml_playground.config.schema import TrainConfig

# Newton–Schulz quintic coefficients (Keller Jordan's Muon; the same as torch.optim.Muon).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
ADAM_EPS = 1e-8


def build_optimizer(
    model: nn.Module, config: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """Decay matrices (weights of Linear/Embedding); never decay biases or norm gains.

    AdamW's fused CUDA kernel updates all parameters in one launch instead of one per tensor.
    With `optimizer = "muon"`, the hidden weight matrices go to Muon and everything else
    (embeddings, output head, gains, biases) to AdamW, all in one `MuonAdamW`.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if config.optimizer == "muon":
        return build_muon(model, named, config)
    decay = [p for _, p in named if p.dim() >= 2]
    no_decay = [p for _, p in named if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups,
        lr=config.learning_rate,
        betas=(config.beta1, config.beta2),
        fused=device.type == "cuda",
    )


def build_muon(
    model: nn.Module, named: list[tuple[str, nn.Parameter]], config: TrainConfig
) -> MuonAdamW:
    """Muon for 2-D weights inside the network; AdamW for the input and output matrices.

    Embeddings are lookups, not linear maps of the residual stream, and the head's rows are
    per-token scores: orthogonalising their updates is what Muon's authors advise against.
    """
    io = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear):
        io.add(id(head.weight))
    hidden = [p for _, p in named if p.dim() == 2 and id(p) not in io]
    io_matrices = [p for _, p in named if p.dim() >= 2 and id(p) not in {id(h) for h in hidden}]
    vectors = [p for _, p in named if p.dim() < 2]
    adamw = {"use_muon": False, "betas": (config.beta1, config.beta2)}
    groups: list[dict[str, Any]] = [
        {
            "params": hidden,
            "use_muon": True,
            "lr": config.muon_learning_rate,
            "lr_scale": config.muon_learning_rate / config.learning_rate,
            "momentum": config.muon_momentum,
            "weight_decay": config.muon_weight_decay,
        },
        {"params": io_matrices, "weight_decay": config.weight_decay, **adamw},
        {"params": vectors, "weight_decay": 0.0, **adamw},
    ]
    return MuonAdamW([g for g in groups if g["params"]], lr=config.learning_rate)


def zeropower_via_newtonschulz(matrix: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """An approximately orthogonal matrix with `matrix`'s singular vectors (U S' V^T, S' ≈ 1).

    Five quintic Newton–Schulz iterations, as in Muon: the coefficients push every singular
    value into about [0.7, 1.2] fast rather than converge exactly, which is all the update needs
    and cheap enough to run every step. bfloat16 on CUDA (tensor cores; torch.optim.Muon does
    the same everywhere), float32 elsewhere: CPUs without bf16 units run it ~15x slower.
    """
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(torch.bfloat16 if matrix.is_cuda else torch.float32)
    tall = matrix.size(0) > matrix.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


class MuonAdamW(torch.optim.Optimizer):
    """Muon (Jordan et al. 2024) for groups with `use_muon`, AdamW for the others.

    Muon keeps a momentum of the gradient and steps along its orthogonalised version, so every
    direction of a weight matrix moves at the same rate; per step it matches torch.optim.Muon
    (Nesterov momentum, lr scaled by sqrt(max(1, rows/cols)), decoupled weight decay). AdamW
    groups run torch's own AdamW kernel (fused on CUDA and CPU).

    One optimizer, not two, so checkpoints, GradScaler and the schedule see a single object. It
    honours the `found_inf` attribute that torch's fused optimizers read: when that 0-dim flag
    is nonzero the step changes nothing (weights, moments, step counts), decided on the device.
    """

    def __init__(self, params: list[dict[str, Any]], lr: float) -> None:
        defaults = {
            "lr": lr,
            "lr_scale": 1.0,
            "betas": (0.9, 0.95),
            "eps": ADAM_EPS,
            "weight_decay": 0.0,
            "momentum": 0.95,
            "use_muon": False,
            "fused": False,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            device = group["params"][0].device
            # Fused AdamW takes `found_inf`; load_state_dict keeps "step" on the device for it.
            group["fused"] = not group["use_muon"] and device.type in ("cuda", "cpu")
            if group["use_muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon groups take 2-D weight matrices only")

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        found_inf: torch.Tensor | None = getattr(self, "found_inf", None)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["use_muon"]:
                self._muon_step(group, params, found_inf)
            else:
                self._adamw_step(group, params, found_inf)

    def _muon_step(
        self, group: dict[str, Any], params: list[torch.Tensor], found_inf: torch.Tensor | None
    ) -> None:
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        for param in params:
            grad = param.grad
            assert grad is not None
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(param)
            buffer = state["momentum_buffer"]
            scale = lr * math.sqrt(max(1.0, param.size(0) / param.size(1)))
            if found_inf is None:
                buffer.lerp_(grad, 1.0 - momentum)
                update = zeropower_via_newtonschulz(grad.lerp(buffer, momentum))
                param.mul_(1.0 - lr * decay).add_(update.to(param.dtype), alpha=-scale)
                continue
            # Decided on the device: compute the step, keep the old values where it is bad.
            new_buffer = buffer.lerp(grad, 1.0 - momentum)
            update = zeropower_via_newtonschulz(grad.lerp(new_buffer, momentum))
            new_param = param.mul(1.0 - lr * decay).add_(update.to(param.dtype), alpha=-scale)
            skip = found_inf.to(param.device) > 0
            buffer.copy_(torch.where(skip, buffer, new_buffer))
            param.copy_(torch.where(skip, param, new_param))

    def _adamw_step(
        self, group: dict[str, Any], params: list[torch.Tensor], found_inf: torch.Tensor | None
    ) -> None:
        fused = bool(group["fused"])
        if found_inf is not None and not fused and bool(found_inf.item()):
            return  # unfused kernels take no flag: decide on the host (MPS only)
        grads, exp_avgs, exp_avg_sqs, steps = [], [], [], []
        for param in params:
            state = self.state[param]
            if not state:
                device = param.device if fused else None
                state["step"] = torch.zeros((), dtype=torch.float32, device=device)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            grads.append(param.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        beta1, beta2 = group["betas"]
        adam(
            params,
            grads,  # type: ignore[arg-type]
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            fused=fused,
            found_inf=found_inf if fused else None,
            decoupled_weight_decay=True,
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `step_unless_bad` needs no host sync: our MuonAdamW, or a fused torch AdamW."""
    if isinstance(optimizer, MuonAdamW):
        return True
    return isinstance(optimizer, torch.optim.AdamW) and all(
        bool(group.get("fused")) for group in optimizer.param_groups
    )


def step_unless_bad(optimizer: torch.optim.Optimizer, bad: torch.Tensor) -> None:
    """`optimizer.step()`, except that a nonzero `bad` (0-dim float, on the device) makes it a
    no-op: the flag goes in as `found_inf`, the protocol torch's GradScaler uses with fused
    optimizers, so the decision never leaves the device. Only for `skips_on_device` optimizers.
    """
    optimizer.found_inf = bad  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf  # type: ignore[attr-defined]


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The scheduled rate for every group, times the group's `lr_scale` (Muon's own peak)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """Linear warmup to `learning_rate`, then decay to `min_lr`, then flat at `min_lr`.

    cosine: half a cosine from the end of warmup to `decay_iters` (nanoGPT).
    wsd: warmup-stable-decay — hold the peak, then decay linearly over the last
    `wsd_decay_fraction` of `decay_iters` (Hägele et al. 2024): a run can be extended from any
    point of the stable phase, and the final decay gives most of the cosine's gain.

    Warmup starts at lr/(warmup+1), not 0, so step 0 already learns. When decay ends where warmup
    ends there is no decay phase at all, and no division by zero.
    """
    warmup, decay_end = config.warmup_iters, config.decay_iters
    peak, floor = config.learning_rate, config.min_lr
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if step >= decay_end:
        return floor
    if config.lr_schedule == "wsd":
        decay_start = max(warmup, decay_end - round(config.wsd_decay_fraction * decay_end))
        if step < decay_start:
            return peak
        progress = (step - decay_start) / (decay_end - decay_start)
        return peak + progress * (floor - peak)
    progress = (step - warmup) / (decay_end - warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + cosine * (peak - floor)
