"""AdamW with GPT-style parameter groups, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from ml_playground.config.schema import TrainConfig


def build_optimizer(
    model: nn.Module, config: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    """Decay matrices (weights of Linear/Embedding); never decay biases or norm gains.

    The fused CUDA kernel updates all parameters in one launch instead of one per tensor.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
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


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """Linear warmup to `learning_rate`, cosine decay to `min_lr`, then flat at `min_lr`.

    Warmup starts at lr/(warmup+1), not 0, so step 0 already learns. When decay ends where warmup
    ends there is no cosine phase at all, and no division by zero.
    """
    warmup, decay_end = config.warmup_iters, config.decay_iters
    if step < warmup:
        return config.learning_rate * (step + 1) / (warmup + 1)
    if step >= decay_end:
        return config.min_lr
    progress = (step - warmup) / (decay_end - warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr + cosine * (config.learning_rate - config.min_lr)
