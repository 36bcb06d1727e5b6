"""Windows that start on record boundaries (one image = class token + pixels + end token)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ml_playground.data.images import record_tokens
from ml_playground.data.loader import TokenBatches


def _tokens(path: Path, count: int) -> Path:
    np.arange(count, dtype=np.uint16).tofile(path)
    return path


def test_aligned_windows_start_on_record_boundaries(tmp_path: Path) -> None:
    path = _tokens(tmp_path / "train.bin", 66 * 20)
    batches = TokenBatches(path, "uint16", 66, 64, torch.device("cpu"), seed=0, align=66)
    starts = set()
    for _ in range(5):
        x, y = batches.next_batch()
        assert torch.equal(x[:, 1:], y[:, :-1])
        starts |= {int(v) for v in x[:, 0]}
    assert all(start % 66 == 0 for start in starts)
    assert max(starts) == 66 * 19 - 66  # the last full window: image 18 plus image 19's class
    assert len(starts) > 10


def test_unaligned_windows_cover_every_start(tmp_path: Path) -> None:
    path = _tokens(tmp_path / "train.bin", 40)
    batches = TokenBatches(path, "uint16", 8, 256, torch.device("cpu"), seed=0)
    x, _ = batches.next_batch()
    assert {int(v) for v in x[:, 0]} == set(range(40 - 8))


def test_record_tokens_of_image_and_text_datasets() -> None:
    assert record_tokens({"image_shape": [8, 8]}) == 66
    assert record_tokens({"vocab_size": 65}) == 1
