"""`TokenBatches` with a loss mask: targets are IGNORE_INDEX exactly where the mask is 0, and the
mask changes neither which windows are drawn, nor the cursor, nor the DDP slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ml_playground.data.loader import IGNORE_INDEX, TokenBatches
from ml_playground.errors import DataError
from ml_playground.model.gpt import IGNORE_INDEX as MODEL_IGNORE_INDEX

CPU = torch.device("cpu")


def write_shards(tmp_path: Path, sizes: list[int]) -> tuple[list[Path], list[Path]]:
    """Token shards counting up from 0, and masks scoring every token whose id is odd."""
    tokens, masks = [], []
    first = 0
    for index, size in enumerate(sizes):
        ids = np.arange(first, first + size, dtype=np.uint16)
        first += size
        tokens.append(tmp_path / f"train-{index:05d}.bin")
        masks.append(tmp_path / f"train_mask-{index:05d}.bin")
        ids.tofile(tokens[-1])
        (ids % 2).astype(np.uint8).tofile(masks[-1])
    return tokens, masks


def test_the_loader_and_the_model_agree_on_the_ignore_value() -> None:
    assert IGNORE_INDEX == MODEL_IGNORE_INDEX == -1


def test_targets_are_ignored_where_the_mask_is_zero(tmp_path: Path) -> None:
    tokens, masks = write_shards(tmp_path, [300, 200])
    plain = TokenBatches(tokens, "uint16", 8, 6, CPU, seed=3)
    masked = TokenBatches(tokens, "uint16", 8, 6, CPU, seed=3, mask=masks)
    for _ in range(3):
        x, y = plain.next_batch()
        mx, my = masked.next_batch()
        assert torch.equal(x, mx)  # the same windows: the mask draws nothing
        assert my.dtype == torch.int64
        odd = y % 2 == 1  # the mask scores odd ids
        assert torch.equal(my[odd], y[odd])
        assert (my[~odd] == IGNORE_INDEX).all()
        assert odd.any()
        assert (~odd).any()


def test_masked_targets_replay_after_resume(tmp_path: Path) -> None:
    tokens, masks = write_shards(tmp_path, [400])
    batches = TokenBatches(tokens, "uint16", 16, 4, CPU, seed=0, mask=masks)
    batches.next_batch()
    cursor = batches.state()
    expected = [batches.next_batch() for _ in range(3)]
    resumed = TokenBatches(tokens, "uint16", 16, 4, CPU, seed=99, mask=masks)
    resumed.load_state(cursor)
    for x, y in expected:
        rx, ry = resumed.next_batch()
        assert torch.equal(rx, x)
        assert torch.equal(ry, y)


def test_ranks_split_the_masked_global_batch(tmp_path: Path) -> None:
    tokens, masks = write_shards(tmp_path, [250, 250])
    whole = TokenBatches(tokens, "uint16", 8, 4, CPU, seed=1, mask=masks)
    ranks = [
        TokenBatches(tokens, "uint16", 8, 2, CPU, seed=1, rank=r, world_size=2, mask=masks)
        for r in (0, 1)
    ]
    for _ in range(3):
        x, y = whole.next_batch()
        parts = [rank.next_batch() for rank in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)


def test_aligned_windows_keep_their_mask(tmp_path: Path) -> None:
    tokens, masks = write_shards(tmp_path, [200])
    batches = TokenBatches(tokens, "uint16", 9, 8, CPU, seed=0, align=10, mask=masks)
    x, y = batches.next_batch()
    assert (x[:, 0] % 10 == 0).all()
    # Windows start at even ids, so every other target is an odd id (scored).
    assert torch.equal(y[:, ::2], x[:, ::2] + 1)
    assert (y[:, 1::2] == IGNORE_INDEX).all()


def test_a_mask_of_another_length_is_refused(tmp_path: Path) -> None:
    tokens, masks = write_shards(tmp_path, [100])
    np.ones(99, dtype=np.uint8).tofile(masks[0])
    with pytest.raises(DataError, match=r"loss masks .* do not match .* prepare --force"):
        TokenBatches(tokens, "uint16", 8, 2, CPU, seed=0, mask=masks)
    masks[0].unlink()
    with pytest.raises(DataError, match=r"missing token file .*train_mask"):
        TokenBatches(tokens, "uint16", 8, 2, CPU, seed=0, mask=masks)
