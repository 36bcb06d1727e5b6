"""Data-parallel training under torchrun: the same command, N processes.

torchrun sets `RANK`, `LOCAL_RANK` and `WORLD_SIZE`; without them (a plain `ml-playground train`)
everything here is a no-op with world size 1. Each rank trains on its own slice of every global
batch (see `data.loader.TokenBatches`), DDP averages gradients, and only rank 0 writes files.
NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ml_playground.errors import TrainingError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        """One GPU per local rank; CPU ranks share the CPU."""
        if self.enabled and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Average a tensor over all ranks (identity with one process)."""
        if not self.enabled:
            return values
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.world_size

    def any(self, flags: torch.Tensor) -> torch.Tensor:
        """Element-wise logical OR of 0/1 flags over all ranks."""
        if not self.enabled:
            return flags
        flags = flags.clone()
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return flags

    def agree(self, flags: list[bool], device: torch.device) -> list[bool]:
        """Each flag true if it is true on any rank (no device round trip with one process)."""
        if not self.enabled:
            return flags
        merged = self.any(torch.tensor([float(f) for f in flags], device=device))
        return [value > 0 for value in merged.tolist()]

    def gather_objects(self, obj: object) -> list[object]:
        if not self.enabled:
            return [obj]
        gathered: list[object] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device_type: str) -> DistContext:
    """Join the process group torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    try:
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as exc:
        raise TrainingError(
            "WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not integers; launch with "
            "`torchrun --nproc_per_node=N -m ml_playground train ...`"
        ) from exc
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size)


def shutdown_distributed(context: DistContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
