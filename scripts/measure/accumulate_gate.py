"""accumulate's gate (`scripts/gates.py accumulate`): runs in this process for one process, and
under torchrun (2 gloo processes on the CPU) for the all-reduce counts. gallery/accumulate.py's
EXAMPLE names it (`Gate(measure="accumulate_gate:measure")`): a table of seeds in one process
cannot hold a 2-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from scripts.measure.gate import folder, run

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("grad_rel_error", "optimizer_grad_norm", "val_loss", "allreduces_per_step",
        "steps_per_sec", "wall_seconds")
# the spread of lengths: equal, then wider and wider
SPREADS = {"lengths 64-64": ("min_len=64", "max_len=64"), "lengths 32-96": ("min_len=32",
                                                                              "max_len=96"),
           "lengths 8-128": ("min_len=8", "max_len=128"), "lengths 2-128": ("min_len=2",
                                                                             "max_len=128")}


def torchrun(tmp: Path, label: str, *overrides: str) -> dict:
    out = tmp / "accumulate" / folder(label)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "gallery.accumulate", f"out_dir={out}", "device=cpu", "threads=1", *overrides]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads((out / "summary.json").read_text())


def measure(tmp: Path, figures: Path | None) -> dict:
    rows: dict[str, list[dict]] = {}
    first: dict[str, dict] = {}

    def keep(label: str, summary: dict) -> None:
        first.setdefault(label, summary)
        rows.setdefault(label, []).append({k: summary.get(k) for k in KEYS})
        print(f"accumulate {label}: {rows[label][-1]}", flush=True)

    for mistake in ("none", "mean_of_means"):
        for seed in range(3):
            keep(mistake, run("accumulate", f"seed={seed}", f"mistake={mistake}",
                              f"out_dir={tmp}/accumulate/{mistake}/{seed}"))
        for spread, overrides in SPREADS.items():  # the error as the lengths grow unequal
            keep(f"{mistake} {spread}", run("accumulate", "seed=0", f"mistake={mistake}", "steps=1",
                                            *overrides,
                                            f"out_dir={tmp}/accumulate/{folder(spread)}/{mistake}"))
    for mistake in ("none", "clip_scaled"):
        for seed in range(3):
            keep(f"{mistake} amp", run("accumulate", f"seed={seed}", f"mistake={mistake}",
                                       "amp=true",
                                       f"out_dir={tmp}/accumulate/amp/{mistake}/{seed}"))
    for mistake in ("none", "sync_every_micro_batch", "no_sync_backward_only"):
        keep(f"{mistake} 2 processes", torchrun(tmp, f"{mistake} 2", f"mistake={mistake}",
                                                "steps=100", "eval_every=100"))
    if figures is not None:
        draw(first, figures / "accumulate.png")
    pattern, means = rows["none"], rows["mean_of_means"]
    two = {m: rows[f"{m} 2 processes"][0] for m in ("none", "sync_every_micro_batch",
                                                     "no_sync_backward_only")}
    passed = (all(r["grad_rel_error"] <= 1e-5 for r in pattern)
              and two["none"]["grad_rel_error"] <= 1e-5
              and two["none"]["allreduces_per_step"] == 1
              and all(r["grad_rel_error"] >= 0.01 for r in means)
              and all(two[m]["allreduces_per_step"] >= 2 * two["none"]["allreduces_per_step"]
                      for m in ("sync_every_micro_batch", "no_sync_backward_only"))
              and all(m["val_loss"] >= p["val_loss"] + 0.3
                      for p, m in zip(rows["none amp"], rows["clip_scaled amp"])))
    return {"runs": rows, "pass": passed}


def draw(first: dict[str, dict], path: Path) -> None:
    """Seed 0: the validation loss under autocast with a GradScaler, the pattern against
    clip_scaled; and the accumulated gradient's error against the full batch's as the lengths grow
    unequal."""
    from gallery import accumulate
    from gallery.core import plots

    fig = plots.pyplot().figure(figsize=(10, 3.4))
    ax = fig.add_subplot(1, 2, 1)
    for label in ("none amp", "clip_scaled amp"):
        accumulate.draw_loss(ax, first[label]["curve"], label.replace("none", "pattern"))
    ax = fig.add_subplot(1, 2, 2)
    for mistake in ("none", "mean_of_means"):
        errors = [first[f"{mistake} {spread}"]["grad_rel_error"] for spread in SPREADS]
        ax.plot(range(len(SPREADS)), errors, marker="o",
                label="pattern" if mistake == "none" else mistake)
    ax.set_xticks(range(len(SPREADS)), [s.removeprefix("lengths ") for s in SPREADS])
    ax.set(yscale="log", xlabel="sequence lengths in a micro-batch",
           ylabel="relative error vs the full batch")
    ax.legend(fontsize=7)
    fig.suptitle("accumulate on pydoc, seed 0", fontsize=9)
    plots.save(fig, path)
