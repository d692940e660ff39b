"""`scripts/bench.py tour`: the README's main job, `scripts/run.sh` (the quick tour), timed as a
user meets it: a whole process, warm (a first run fills the caches: the pretrained models, the
datasets), then each example's share of it from the runs' own wall times in tour.json. The quick
budgets each example declares are recorded beside the times, so tests/test_tour_budget.py can tell a
record that no longer matches the code (a new example, a changed budget) from one that does."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from gallery.core.registry import examples
from scripts.measure.timing import ROOT, process_seconds

TARGET_SECONDS, TARGET_SHARE = 60.0, 0.2


def bench_tour(device: torch.device, rounds: int = 2) -> list[dict]:
    argv = [sys.executable, "-m", "gallery", "tour", "budget=quick", f"device={device.type}"]
    with tempfile.TemporaryDirectory() as tmp:
        process_seconds([*argv, f"out_dir={tmp}/warm-up"], ROOT)  # fills the caches
        runs = []
        for i in range(rounds):
            seconds = process_seconds([*argv, f"out_dir={tmp}/{i}"], ROOT)
            ran = json.loads((Path(tmp) / str(i) / "tour.json").read_text())
            runs.append((seconds, {name: sum(s["wall_seconds"] for s in by_mistake.values())
                                   for name, by_mistake in ran.items() if name != "lessons"}))
    seconds, per_example = min(runs, key=lambda run: run[0])  # the faster of the warm runs
    found = examples()
    return [{"setting": f"scripts/run.sh (python -m gallery tour budget=quick), warm, a whole "
                        f"process, the faster of {rounds} runs; the rows below: each example's "
                        "runs' own wall times, and their share of the whole",
             "seconds": seconds, "target_seconds": TARGET_SECONDS, "target_share": TARGET_SHARE},
            *({"example": name, "runs_seconds": per_example[name],
               "share": per_example[name] / seconds, "budget": found[name].budgets["quick"]}
              for name in per_example)]
