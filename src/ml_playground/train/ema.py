"""An exponential moving average (EMA) of the model's weights.

Averaging the weights over the last ~1/(1-decay) steps smooths out optimizer noise; the average
often evaluates better than the raw weights late in training. The shadow copy lives in float32
on the model's device and is updated in place after every optimizer step with one fused
`_foreach_lerp_`, so it costs one pass over the parameters.

It tracks the *uncompiled* module's parameters: `torch.compile` and DDP wrap the same tensors,
so the average is correct whichever wrapper ran the step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.names = [name for name, _ in model.named_parameters()]
        self.params = [param for _, param in model.named_parameters()]
        self.shadow = [param.detach().clone().float() for param in self.params]
        self.updates = 0

    def current_decay(self) -> float:
        """Warm up the decay ((1 + n) / (10 + n), capped) so early weights are not over-weighted.

        Without it a 0.999 average of a short run would still be mostly the random init.
        """
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 - self.current_decay()
        current = [param.detach().float() for param in self.params]
        torch._foreach_lerp_(self.shadow, current, weight)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights by parameter name (what `ema.safetensors` holds)."""
        return {
            name: tensor.detach().clone()
            for name, tensor in zip(self.names, self.shadow, strict=True)
        }

    @torch.no_grad()
    def load_state_dict(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        missing = sorted(set(self.names) - set(tensors))
        if missing:
            raise KeyError(f"EMA state lacks {missing}")
        for name, shadow in zip(self.names, self.shadow, strict=True):
            shadow.copy_(tensors[name])
        self.updates = updates

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Temporarily run the model with the averaged weights (for evaluation or sampling)."""
        backup = [param.detach().clone() for param in self.params]
        with torch.no_grad():
            for param, shadow in zip(self.params, self.shadow, strict=True):
                param.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, saved in zip(self.params, backup, strict=True):
                    param.copy_(saved)
