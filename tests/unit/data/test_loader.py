from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ml_playground.data.loader import TokenBatches
from ml_playground.errors import DataError


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    return path


def test_targets_are_inputs_shifted_by_one(token_file: Path) -> None:
    batches = TokenBatches(token_file, "uint16", 8, 4, torch.device("cpu"), seed=0)
    x, y = batches.next_batch()
    assert x.shape == y.shape == (4, 8)
    assert x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y[:, -1], x[:, -1] + 1)


def test_consecutive_batches_differ_and_state_replays(token_file: Path) -> None:
    batches = TokenBatches(token_file, "uint16", 8, 4, torch.device("cpu"), seed=0)
    cursor = batches.state()
    first, _ = batches.next_batch()
    second, _ = batches.next_batch()
    assert not torch.equal(first, second)
    batches.load_state(cursor)
    replay, _ = batches.next_batch()
    assert torch.equal(first, replay)


def test_too_short_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "val.bin"
    np.arange(5, dtype=np.uint16).tofile(path)
    with pytest.raises(DataError, match=r"lower model.block_size"):
        TokenBatches(path, "uint16", 8, 1, torch.device("cpu"), seed=0)


def test_missing_file_says_how_to_recreate(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"prepare --force"):
        TokenBatches(tmp_path / "x.bin", "uint16", 8, 1, torch.device("cpu"), seed=0)
