"""The timing every bench shares: alternating blocks in one process, whole processes, a config by
name, and torch's thread count before any gallery run changes it."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
# before any gallery run sets threads=auto in this process
DEFAULT_THREADS = torch.get_num_threads()

from gallery.core.cli import compose  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(variants: dict, rounds: int, per_round: int, device: torch.device,
              warmup: int = 3) -> dict:
    """Median seconds per call of each variant, timed in alternating blocks."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(per_round):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) / per_round)
    return {name: statistics.median(ts) for name, ts in times.items()}


def process_seconds(argv: list[str], cwd: Path, env: dict | None = None) -> float:
    """Seconds of one whole process from start to exit; `env` adds to this process's
    environment."""
    return process_run(argv, cwd, env)[0]


def process_run(argv: list[str], cwd: Path, env: dict | None = None) -> tuple[float, str]:
    """Seconds of one whole process from start to exit, and what it printed."""

    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    return time.perf_counter() - start, done.stdout


def config(name: str, *overrides: str):
    return compose(name, overrides)
