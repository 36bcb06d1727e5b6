"""Random-window batches from a memmapped token file.

The file is never read whole: each batch copies `batch_size` windows out of the memmap. Offsets
come from a dedicated `torch.Generator`, whose state is the data cursor saved in checkpoints, so
a resumed run draws exactly the batches the uninterrupted run would have drawn.

Under DDP every rank draws the same *global* batch of `batch_size * world_size` offsets from the
same generator and copies only its own `batch_size` rows: the ranks never overlap, together they
see exactly what one process with the global batch would see, and the cursor is rank-independent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ml_playground.errors import DataError


class TokenBatches:
    """Draws (input, target) windows of `block_size` tokens from one split's shard files.

    A window never crosses a shard boundary; a window start is uniform over all valid starts of
    all shards, so bigger shards are sampled proportionally more. With `align` > 1 windows start
    only at multiples of `align` (records of fixed length, such as one image's tokens).
    """

    def __init__(
        self,
        path: Path | Sequence[Path],
        dtype: str,
        block_size: int,
        batch_size: int,
        device: torch.device,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        align: int = 1,
    ) -> None:
        paths = [path] if isinstance(path, Path) else list(path)
        for file in paths:
            if not file.is_file():
                raise DataError(
                    f"missing token file {file}; re-run `ml-playground prepare --force`"
                )
        self.shards = [np.memmap(file, dtype=np.dtype(dtype), mode="r") for file in paths]
        if align < 1:
            raise DataError(f"window alignment must be at least 1, not {align}")
        self.align = align
        # Starts s * align with s * align + block_size + 1 <= len (for align 1: len - block_size).
        starts_per_shard = [
            (len(shard) - block_size - 1) // align + 1 if len(shard) > block_size else 0
            for shard in self.shards
        ]
        if sum(starts_per_shard) == 0:
            total = sum(len(shard) for shard in self.shards)
            raise DataError(
                f"{paths[0].name} holds {total} tokens, fewer than block_size+1="
                f"{block_size + 1}; lower model.block_size or add text"
            )
        # Cumulative window starts: a global index maps to (shard, offset) by binary search.
        self.cumulative = np.cumsum(starts_per_shard)
        self.block_size = block_size
        self.batch_size = batch_size
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def tokens(self) -> np.ndarray:
        """The first shard (most datasets have exactly one)."""
        return self.shards[0]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        global_starts = torch.randint(
            int(self.cumulative[-1]),
            (self.batch_size * self.world_size,),
            generator=self.generator,
        ).numpy()
        starts = global_starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        windows = np.stack([self._window(int(index)) for index in starts])
        batch = torch.from_numpy(windows)
        if self.device.type == "cuda":
            # Pinned host memory lets the copy overlap with the previous step's compute.
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        return batch[:, :-1], batch[:, 1:]

    def _window(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self.cumulative, index, side="right"))
        offset = (index - (int(self.cumulative[shard - 1]) if shard else 0)) * self.align
        return self.shards[shard][offset : offset + self.block_size + 1].astype(np.int64)

    def state(self) -> torch.Tensor:
        """The cursor: this split's generator state (a uint8 tensor)."""
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
