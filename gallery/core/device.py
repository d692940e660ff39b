"""Pick the device from one string; set CPU threads; autocast a module's forward on CUDA."""

from __future__ import annotations

import os
import re
import sys

import torch

from gallery.core.errors import DeviceError

_DEVICE_SPEC = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(spec: str) -> torch.device:
    """`auto` is CUDA when present, else CPU. Asking for an absent backend is an error, never a
    fallback: a CI job that asked for a GPU must not pass quietly on the CPU."""
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


def set_threads(spec: str | int, device: torch.device, single_thread: bool, jobs: int = 1) -> int:
    """Set torch's CPU intra-op threads and return the count.

    `auto`: one thread for the small models, where a second thread costs more in handoffs than it
    saves, and where two runs side by side (a sweep, a CI runner) would otherwise each spin on every
    core; otherwise the cores shared out among the `jobs` that run at once (a joblib sweep), so that
    jobs x threads <= cores. A number sets it, with a warning when the jobs would oversubscribe."""
    spec, cores = str(spec), os.cpu_count() or 1
    if spec != "auto":
        torch.set_num_threads(int(spec))
        if jobs * int(spec) > cores:
            print(f"threads={spec} with {jobs} jobs at once asks for {jobs * int(spec)} threads on "
                  f"{cores} cores; "
                  "the jobs will slow each other down (threads=auto shares the cores out)",
                  file=sys.stderr)
    elif single_thread or device.type != "cpu":  # on a GPU the CPU threads only feed it
        torch.set_num_threads(1)
    else:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), cores // jobs)))
    return torch.get_num_threads()


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on a CUDA GPU that has it (Ampere and later); None (float32) everywhere else.

    fp16 is never chosen: its gradients underflow unless a GradScaler scales the loss before
    backward and unscales the grads before the step, and that would put scaler calls into every
    pattern function (`scaler.scale(loss).backward()`, `scaler.step(opt)`). bf16 has float32's
    exponent range and needs no scaler; an older GPU runs the examples in float32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def fused(device: torch.device) -> bool:
    """Whether the optimizers can take `fused=True` here (one kernel for every parameter's update,
    instead of a loop of small ones: what a small RL net's step is mostly made of)."""
    return device.type in ("cpu", "cuda")


def compile_modules(enabled: bool, *modules: torch.nn.Module, device: torch.device | None = None,
                    ) -> None:
    """compile=true: torch.compile each module in place (`nn.Module.compile`, so state_dict keys and
    checkpoints are unchanged). The first calls pay for the compilation, tens of seconds on a CPU;
    it pays off on long runs of the larger models on a GPU. Pass the modules whose call does the
    work, and compile a target network after it was copied (a deep copy would share the compiled
    call). On CUDA, pass `device` to replay each compiled call as a CUDA graph (torch.compile's
    "reduce-overhead" mode): a small net's step is otherwise bound by kernel launches."""
    mode = "reduce-overhead" if device is not None and device.type == "cuda" else None
    if enabled:
        for module in modules:
            module.compile(mode=mode)


def amp_forward(module: torch.nn.Module, device: torch.device,
                enabled: bool = True) -> torch.nn.Module:
    """Run `module.forward` under bf16 autocast on a GPU with bf16 (`amp_dtype`) and return float32
    outputs; unchanged elsewhere.

    Autocast wraps only the forward, so the pattern functions stay free of AMP code and backward
    runs outside autocast, as PyTorch recommends. The module's state_dict is unchanged."""
    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        return module
    forward = module.forward

    def to_float(out):
        if isinstance(out, torch.Tensor):
            return out.float() if out.is_floating_point() else out
        if isinstance(out, tuple):
            return tuple(to_float(o) for o in out)
        return out

    def autocast_forward(*args, **kwargs):
        with torch.autocast(device_type="cuda", dtype=dtype):
            return to_float(forward(*args, **kwargs))

    module.forward = autocast_forward
    return module
