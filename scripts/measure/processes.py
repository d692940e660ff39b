"""`scripts/bench.py smoke` and `startup`: whole processes, the smoke test's wall time and a
command's answer against importing torch alone."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import torch

from scripts.measure.timing import ROOT, process_seconds


def bench_smoke(device: torch.device) -> list[dict]:
    """`python -m gallery smoke` as a CI job runs it: a whole process, every example (median of
    3)."""
    import statistics as stats

    seconds = [process_seconds([sys.executable, "-m", "gallery", "smoke", f"device={device}"],
                               ROOT) for _ in range(3)]
    return [{"command": f"python -m gallery smoke device={device}",
             "median_seconds": stats.median(seconds), "max_seconds": max(seconds)}]


def bench_startup(device: torch.device, rounds: int = 5) -> list[dict]:
    """`python -m gallery.<example> --help` and a bad input (`steps=0`, refused in one line, exit 2)
    as whole processes, each paired with `python -c "import torch"` run just before it: the median
    of the pair-by-pair ratios. Target: at most 1.15 (the gallery adds little to importing torch
    before it answers)."""

    def seconds(*args: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return time.perf_counter() - start

    from gallery.core.registry import examples

    rows = []
    for name in examples():
        ratios: dict[str, list[float]] = {"help": [], "bad_input": []}
        seconds("-c", "import torch")  # warm the file cache
        for _ in range(rounds):
            for kind, args in (("help", ["--help"]), ("bad_input", ["steps=0"])):
                torch_alone = seconds("-c", "import torch")
                ratios[kind].append(seconds("-m", f"gallery.{name}", *args) / torch_alone)
        rows.append({"command": f"python -m gallery.{name} --help | steps=0", "rounds": rounds,
                     "help_over_import_torch": statistics.median(ratios["help"]),
                     "bad_input_over_import_torch": statistics.median(ratios["bad_input"]),
                     "target": 1.15})
    return rows
