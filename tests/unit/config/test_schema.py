from __future__ import annotations

import pytest
from pydantic import ValidationError

from ml_playground.config.schema import ExperimentConfig, TrainConfig


def test_sections_are_frozen() -> None:
    config = ExperimentConfig(name="x")
    with pytest.raises(ValidationError):
        config.train.max_iters = 3  # type: ignore[misc]


def test_decay_iters_defaults_to_max_iters() -> None:
    assert TrainConfig(max_iters=50).decay_iters == 50
    assert TrainConfig(max_iters=50, lr_decay_iters=40, warmup_iters=10).decay_iters == 40


def test_decay_shorter_than_warmup_is_rejected() -> None:
    with pytest.raises(ValidationError, match="decay must end after warmup"):
        TrainConfig(warmup_iters=100, lr_decay_iters=50)


def test_run_name_must_be_a_safe_directory_name() -> None:
    with pytest.raises(ValidationError):
        TrainConfig(run_name="../escape")
