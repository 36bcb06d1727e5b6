"""Random-window batches from a memmapped token file.

The file is never read whole: each batch copies `batch_size` windows out of the memmap. Offsets
come from a dedicated `torch.Generator`, whose state is the data cursor saved in checkpoints, so
a resumed run draws exactly the batches the uninterrupted run would have drawn.

Under DDP every rank draws the same *global* batch of `batch_size * world_size` offsets from the
same generator and copies only its own `batch_size` rows: the ranks never overlap, together they
see exactly what one process with the global batch would see, and the cursor is rank-independent.

Prompt/response datasets carry a loss mask beside their tokens (see `data.prepare`); given its
files, a batch's targets hold `IGNORE_INDEX` where the mask is 0, so the loss skips the prompt.
The mask adds no randomness: batches, cursor and DDP slices are the same with or without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ml_playground.errors import DataError

IGNORE_INDEX = -1
"""A target the loss skips (nanoGPT's and `F.cross_entropy`'s ignore_index convention; the
models in `model.gpt` and `finetune.model` use the same value)."""


class TokenBatches:
    """Draws (input, target) windows of `block_size` tokens from one split's shard files.

    A window never crosses a shard boundary; a window start is uniform over all valid starts of
    all shards, so bigger shards are sampled proportionally more. With `align` > 1 windows start
    only at multiples of `align` (records of fixed length, such as one image's tokens).
    `mask` (one uint8 file per token file, same lengths) turns targets whose mask is 0 into
    `IGNORE_INDEX`.
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
        mask: Sequence[Path] | None = None,
    ) -> None:
        paths = [path] if isinstance(path, Path) else list(path)
        for file in [*paths, *(mask or [])]:
            if not file.is_file():
                raise DataError(
                    f"missing token file {file}; re-run `ml-playground prepare --force`"
                )
        self.shards = [np.memmap(file, dtype=np.dtype(dtype), mode="r") for file in paths]
        self.masks = None if mask is None else [np.memmap(f, np.uint8, mode="r") for f in mask]
        if self.masks is not None and list(map(len, self.masks)) != list(map(len, self.shards)):
            raise DataError(
                f"the loss masks of {paths[0].name} do not match its tokens; re-run "
                f"`ml-playground prepare --force`"
            )
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
        places = [self._place(int(index)) for index in starts]
        windows = np.stack([self._window(self.shards, place) for place in places])
        if self.masks is None:
            batch = self._to_device(windows)
            return batch[:, :-1], batch[:, 1:]
        scored = np.stack([self._window(self.masks, place) for place in places])[:, 1:]
        targets = np.where(scored != 0, windows[:, 1:], IGNORE_INDEX)
        pair = self._to_device(np.stack([windows[:, :-1], targets]))  # one host-to-device copy
        return pair[0], pair[1]

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            # Pinned host memory lets the copy overlap with the previous step's compute.
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def _place(self, index: int) -> tuple[int, int]:
        """(shard, offset) of the global window start `index`."""
        shard = int(np.searchsorted(self.cumulative, index, side="right"))
        offset = (index - (int(self.cumulative[shard - 1]) if shard else 0)) * self.align
        return shard, offset

    def _window(self, arrays: Sequence[np.ndarray], place: tuple[int, int]) -> np.ndarray:
        shard, offset = place
        return arrays[shard][offset : offset + self.block_size + 1].astype(np.int64)

    def state(self) -> torch.Tensor:
        """The cursor: this split's generator state (a uint8 tensor)."""
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
