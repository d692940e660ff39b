"""Pick the device from one string, and the matching autocast context."""

from __future__ import annotations

import contextlib
import re

import torch

from gallery.core.errors import DeviceError

_DEVICE_SPEC = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(spec: str) -> torch.device:
    """`auto` is CUDA when present, else CPU. Asking for an absent backend is an error, never a fallback:
    a CI job that asked for a GPU must not pass quietly on the CPU."""
    spec = str(spec).strip().lower()
    if not _DEVICE_SPEC.match(spec):
        raise DeviceError(
            f"device={spec!r} is not a device; use one of: auto, cpu, cuda, cuda:N, mps"
        )
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device={spec} was asked for, but CUDA is not available on this machine "
                "(use device=cpu or device=auto)"
            )
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device={spec}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return torch.device("cuda", index)
    if spec == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise DeviceError("device=mps was asked for, but MPS is not available on this machine")
    return torch.device(spec)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (no GradScaler needed); a no-op elsewhere, so CPU runs stay exact."""
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()
