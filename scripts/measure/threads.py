"""`scripts/bench.py threads`: threads=auto against torch's default, alone and two runs at once."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import torch

from scripts.measure.timing import DEFAULT_THREADS, ROOT


def bench_threads(device: torch.device, steps: int = 1500) -> list[dict]:
    """The ring8 GAN (3x128 MLPs, as when this was first measured) for `steps` steps as a whole
    process: alone, and two at once (as in a sweep or on a shared CI runner), with threads=auto (one
    thread for this small model) and with torch's default."""

    default = DEFAULT_THREADS
    args = [sys.executable, "-m", "gallery.gan", "data=ring8", "hidden=128", f"steps={steps}",
            f"eval_every={steps}", "log_every=500", "eval_samples=500", f"device={device}"]

    def wall(threads: str, copies: int) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            procs = [subprocess.Popen([*args, f"threads={threads}", f"out_dir={tmp}/{i}"], cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env=os.environ.copy())
                     for i in range(copies)]
            if any(p.wait() != 0 for p in procs):
                raise RuntimeError(f"a gallery.gan run with threads={threads} failed")
            return time.perf_counter() - start

    rows = []
    for label, threads in (("auto", "auto"), (f"torch default ({default})", str(default))):
        alone, pair = wall(threads, 1), wall(threads, 2)
        rows.append({"threads": label, "steps": steps, "alone_seconds": alone,
                     "two_at_once_seconds": pair, "slowdown_two_at_once_over_alone": pair / alone})
    auto_row, default_row = rows
    pair_ratio = default_row["two_at_once_seconds"] / auto_row["two_at_once_seconds"]
    alone_ratio = default_row["alone_seconds"] / auto_row["alone_seconds"]
    rows.append({"default_pair_over_auto_pair": pair_ratio,
                 "default_alone_over_auto_alone": alone_ratio})
    return rows
