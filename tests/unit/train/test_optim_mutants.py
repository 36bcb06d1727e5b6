"""Exact values of the learning-rate schedule, where mutation testing found it under-pinned.

`test_optim.py` checks the schedule's shape (monotone, bounded, positive at step 0); these tests
pin the numbers, so an off-by-one in warmup or a wrong decay start cannot hide inside the shape.
"""

from __future__ import annotations

import pytest
import torch

from ml_playground.config.schema import TrainConfig
from ml_playground.train.optim import learning_rate_at, set_learning_rate


def test_warmup_climbs_in_equal_steps_of_peak_over_warmup_plus_one() -> None:
    config = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=4, max_iters=100)
    assert [learning_rate_at(step, config) for step in range(5)] == pytest.approx(
        [0.2, 0.4, 0.6, 0.8, 1.0]
    )


def test_cosine_is_halfway_between_peak_and_floor_halfway_through_the_decay() -> None:
    config = TrainConfig(learning_rate=1.0, min_lr=0.2, warmup_iters=10, max_iters=110)
    assert learning_rate_at(60, config) == pytest.approx(0.6)
    assert learning_rate_at(109, config) > 0.2


def test_wsd_never_starts_decaying_before_warmup_ends() -> None:
    # The last 50% of 20 steps would start decaying at step 10, inside the 15-step warmup.
    config = TrainConfig(
        learning_rate=1.0,
        min_lr=0.0,
        warmup_iters=15,
        max_iters=20,
        lr_schedule="wsd",
        wsd_decay_fraction=0.5,
    )
    assert learning_rate_at(14, config) == pytest.approx(15 / 16)  # still warming up
    assert learning_rate_at(15, config) == pytest.approx(1.0)  # decay starts at 15, not 10
    assert learning_rate_at(16, config) == pytest.approx(0.8)
    assert learning_rate_at(19, config) == pytest.approx(0.2)
    assert learning_rate_at(20, config) == 0.0


def test_wsd_decay_length_is_the_fraction_of_the_decay_end() -> None:
    config = TrainConfig(
        learning_rate=1.0,
        min_lr=0.2,
        warmup_iters=0,
        max_iters=200,
        lr_decay_iters=100,
        lr_schedule="wsd",
        wsd_decay_fraction=0.25,
    )
    assert learning_rate_at(75, config) == 1.0  # decay over 75..100
    assert learning_rate_at(80, config) == pytest.approx(0.84)  # 1 + 0.2 * (0.2 - 1)
    assert learning_rate_at(90, config) == pytest.approx(0.52)
    assert learning_rate_at(150, config) == 0.2  # flat at min_lr after lr_decay_iters


def test_set_learning_rate_sets_every_plain_group_to_the_rate_itself() -> None:
    weight, bias = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW(
        [{"params": [weight]}, {"params": [bias], "lr_scale": 10.0}], lr=1.0
    )
    set_learning_rate(optimizer, 0.003)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.003, 0.03])
