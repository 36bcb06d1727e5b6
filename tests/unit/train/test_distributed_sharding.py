"""Data parallelism without a process group: sharding by rank, one-process no-ops, MFU peaks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ml_playground.data.loader import TokenBatches
from ml_playground.train.device import peak_flops, peak_flops_for_name
from ml_playground.train.distributed import DistContext, init_distributed

CPU = torch.device("cpu")
BLOCK, BATCH = 8, 3


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.bin"
    np.arange(5000, dtype=np.uint16).tofile(path)
    return path


def loader(path: Path, batch_size: int, rank: int = 0, world_size: int = 1) -> TokenBatches:
    return TokenBatches(
        path, "uint16", BLOCK, batch_size, CPU, seed=7, rank=rank, world_size=world_size
    )


def test_ranks_split_the_global_batch_of_one_process(token_file: Path) -> None:
    ranks = [loader(token_file, BATCH, rank, world_size=2) for rank in (0, 1)]
    single = loader(token_file, BATCH * 2)
    for _ in range(3):
        (x0, y0), (x1, y1) = (batches.next_batch() for batches in ranks)
        x, y = single.next_batch()
        assert x0.shape == x1.shape == (BATCH, BLOCK)
        assert torch.equal(torch.cat([x0, x1]), x)
        assert torch.equal(torch.cat([y0, y1]), y)
        # The ranks never see the same window of a step.
        assert not torch.equal(x0, x1)
        # The cursor is rank-independent: it is where the one-process loader is.
        assert torch.equal(ranks[0].state(), ranks[1].state())
        assert torch.equal(ranks[0].state(), single.state())


def test_a_rank_resumes_from_the_shared_cursor(token_file: Path) -> None:
    rank1 = loader(token_file, BATCH, rank=1, world_size=2)
    rank1.next_batch()
    cursor = rank1.state()
    expected, _ = rank1.next_batch()

    other = loader(token_file, BATCH, rank=1, world_size=2)
    other.load_state(cursor)
    again, _ = other.next_batch()
    assert torch.equal(again, expected)


def test_one_process_context_is_a_no_op() -> None:
    context = DistContext()
    assert context.rank == 0
    assert context.world_size == 1
    assert not context.enabled
    assert context.is_main
    assert context.place(CPU) == CPU

    values = torch.tensor([1.5, -2.0])
    assert torch.equal(context.mean(values), values)
    flags = torch.tensor([0.0, 1.0])
    assert torch.equal(context.any(flags), flags)
    assert context.agree([True, False], CPU) == [True, False]
    assert context.agree([False, False], CPU) == [False, False]
    payload = {"rng": [1, 2, 3]}
    assert context.gather_objects(payload) == [payload]
    context.barrier()  # no process group: returns at once


def test_init_without_torchrun_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed("cpu") == DistContext()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed("cpu") == DistContext()


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA GeForce RTX 4090", 165e12),
        ("Tesla T4", None),
        ("Some Future Accelerator", None),
    ],
)
def test_peak_flops_by_device_name(name: str, peak: float | None) -> None:
    assert peak_flops_for_name(name) == peak


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_peak_on_the_cpu(dtype: torch.dtype) -> None:
    assert peak_flops(CPU, dtype) is None
