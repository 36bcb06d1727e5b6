"""Device and precision: pick what the machine has, refuse what it cannot do, with a reason."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ml_playground.errors import TrainingError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def mps_available() -> bool:
    return bool(torch.backends.mps.is_available())


def resolve_device(requested: str) -> torch.device:
    """`auto` → cuda > mps > cpu; an explicit device that is absent is a user error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            "train.device=cuda but no CUDA device is visible; use train.device=auto"
        )
    if requested == "mps" and not mps_available():
        raise TrainingError("train.device=mps but MPS is not available; use train.device=auto")
    return torch.device(requested)


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`auto` → bfloat16 on CUDA that supports it, float16 on older CUDA, float32 elsewhere.

    MPS runs float32 unless asked: autocast there covers fewer ops, and float16 needs the
    GradScaler (which `Precision.needs_grad_scaler` turns on for every device).
    """
    if requested == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtype = DTYPES[requested]
    if dtype is torch.float16 and device.type == "cpu":
        raise TrainingError(
            "train.dtype=float16 is not supported on the CPU; use float32 (or bfloat16)"
        )
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError("this GPU has no bfloat16 support; use train.dtype=float16")
    if dtype is torch.bfloat16 and device.type == "mps" and not mps_supports_bfloat16():
        raise TrainingError(
            "bfloat16 autocast on MPS needs macOS 14 or newer; use train.dtype=float16 or float32"
        )
    return dtype


def mps_supports_bfloat16() -> bool:
    return bool(torch.backends.mps.is_macos_or_newer(14, 0))


@dataclass(frozen=True)
class Precision:
    """How forward passes run: autocast to `dtype` unless it is float32."""

    device: torch.device
    dtype: torch.dtype

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.dtype is torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @property
    def needs_grad_scaler(self) -> bool:
        """float16 gradients underflow without loss scaling; bfloat16 has float32's range."""
        return self.dtype is torch.float16


# Dense (no sparsity) peak TFLOP/s for 16-bit matmuls, from the vendors' datasheets. MFU is only
# reported where the peak is known: a made-up peak would make the number meaningless.
PEAK_TFLOPS_16BIT = {
    "H200": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
}


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's peak FLOP/s for `dtype`, or None when unknown (CPU, MPS, float32, new GPUs)."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    return peak_flops_for_name(name)


def peak_flops_for_name(name: str) -> float | None:
    """Longest table key contained in the device name wins ("H100 PCIe" before "H100")."""
    matches = [key for key in PEAK_TFLOPS_16BIT if key in name]
    if not matches:
        return None
    return PEAK_TFLOPS_16BIT[max(matches, key=len)] * 1e12
