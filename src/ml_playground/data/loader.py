"""Random-window batches from a memmapped token file.

The file is never read whole: each batch copies `batch_size` windows out of the memmap. Offsets
come from a dedicated `torch.Generator`, whose state is the data cursor saved in checkpoints, so
a resumed run draws exactly the batches the uninterrupted run would have drawn.

Under DDP every rank draws the same *global* batch of `batch_size * world_size` offsets from the
same generator and copies only its own `batch_size` rows: the ranks never overlap, together they
see exactly what one process with the global batch would see, and the cursor is rank-independent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ml_playground.errors import DataError


class TokenBatches:
    """Draws (input, target) windows of `block_size` tokens from one split."""

    def __init__(
        self,
        path: Path,
        dtype: str,
        block_size: int,
        batch_size: int,
        device: torch.device,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not path.is_file():
            raise DataError(f"missing token file {path}; re-run `ml-playground prepare --force`")
        self.tokens = np.memmap(path, dtype=np.dtype(dtype), mode="r")
        if len(self.tokens) <= block_size:
            raise DataError(
                f"{path.name} holds {len(self.tokens)} tokens, fewer than block_size+1="
                f"{block_size + 1}; lower model.block_size or add text"
            )
        self.block_size = block_size
        self.batch_size = batch_size
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        global_starts = torch.randint(
            len(self.tokens) - self.block_size,
            (self.batch_size * self.world_size,),
            generator=self.generator,
        ).numpy()
        starts = global_starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        windows = np.stack(
            [self.tokens[s : s + self.block_size + 1].astype(np.int64) for s in starts]
        )
        batch = torch.from_numpy(windows)
        if self.device.type == "cuda":
            # Pinned host memory lets the copy overlap with the previous step's compute.
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        return batch[:, :-1], batch[:, 1:]

    def state(self) -> torch.Tensor:
        """The cursor: this split's generator state (a uint8 tensor)."""
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
