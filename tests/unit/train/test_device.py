from __future__ import annotations

import pytest
import torch

from ml_playground.errors import MLPlaygroundError, TrainingError
from ml_playground.train.device import Precision, mps_available, resolve_device, resolve_dtype

CPU = torch.device("cpu")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
CPU_ONLY = pytest.mark.skipif(
    torch.cuda.is_available() or mps_available(), reason="an accelerator is visible"
)


def test_cpu_is_always_available() -> None:
    assert resolve_device("cpu") == CPU


@CPU_ONLY
def test_auto_picks_cpu_on_a_cpu_only_machine() -> None:
    assert resolve_device("auto") == CPU


def test_auto_prefers_cuda_then_mps() -> None:
    device = resolve_device("auto")
    if torch.cuda.is_available():
        assert device.type == "cuda"
    elif mps_available():
        assert device.type == "mps"
    else:
        assert device.type == "cpu"


@NO_CUDA
def test_absent_cuda_is_a_user_error_naming_the_fix() -> None:
    with pytest.raises(TrainingError, match=r"train\.device=cuda .*use train\.device=auto$"):
        resolve_device("cuda")
    assert issubclass(TrainingError, MLPlaygroundError)


@pytest.mark.skipif(mps_available(), reason="MPS is available")
def test_absent_mps_is_a_user_error_naming_the_fix() -> None:
    with pytest.raises(MLPlaygroundError, match=r"train\.device=mps .*use train\.device=auto$"):
        resolve_device("mps")


def test_auto_dtype_is_float32_on_cpu() -> None:
    assert resolve_dtype("auto", CPU) is torch.float32


@pytest.mark.parametrize(
    ("name", "dtype"), [("float32", torch.float32), ("bfloat16", torch.bfloat16)]
)
def test_explicit_dtypes_that_work_on_cpu(name: str, dtype: torch.dtype) -> None:
    assert resolve_dtype(name, CPU) is dtype


def test_float16_on_cpu_is_refused_with_alternatives() -> None:
    with pytest.raises(
        TrainingError, match=r"train\.dtype=float16 is not supported on the CPU; use float32"
    ):
        resolve_dtype("float16", CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_dtype_on_cuda_is_half_precision() -> None:
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert resolve_dtype("auto", torch.device("cuda")) is expected


def test_float32_precision_does_not_autocast() -> None:
    precision = Precision(CPU, torch.float32)
    assert not precision.needs_grad_scaler
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with precision.autocast():
        assert (a @ b).dtype == torch.float32
        assert not torch.is_autocast_enabled("cpu")


def test_bfloat16_precision_autocasts_matmuls_without_a_scaler() -> None:
    precision = Precision(CPU, torch.bfloat16)
    assert not precision.needs_grad_scaler
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with precision.autocast():
        assert (a @ b).dtype == torch.bfloat16
    assert (a @ b).dtype == torch.float32


def test_only_float16_needs_a_grad_scaler() -> None:
    assert Precision(torch.device("cuda"), torch.float16).needs_grad_scaler
