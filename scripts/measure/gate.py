"""Running an example's learning gate (its `EXAMPLE.gate`): one training run per seed of each
group, in this process, one after another, so the wall times are the ones a user would see.
`scripts/gates.py` is the command; this module is what it runs."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from gallery.core import plots
from gallery.core.cli import compose
from gallery.core.registry import Example, Gate, Runs


def run(example: str, *overrides: str) -> dict:
    """One training run through the example's own config, in this process, with its wall time."""
    module = importlib.import_module(f"gallery.{example}")
    cfg = compose(example, ["device=cpu", *overrides])
    start = time.perf_counter()
    summary = module.train(cfg)
    summary["wall_seconds"] = time.perf_counter() - start
    return summary


ROOT = Path(__file__).resolve().parents[2]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # each of several processes on a small CPU


def torchrun_command(example: str, processes: int, *overrides: str, device: str = "cpu"
                     ) -> list[str]:
    """`torchrun --standalone` of an example's command line, `processes` processes of one thread
    each (run it with env=ONE_THREAD)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", "-m", f"gallery.{example}", f"device={device}",
            "threads=1", *overrides]


def torchrun(example: str, processes: int, out: Path, *overrides: str) -> dict:
    """One training run under torchrun, `processes` gloo processes on the CPU; its summary is rank
    0's."""
    cmd = torchrun_command(example, processes, f"out_dir={out}", *overrides)
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, env=ONE_THREAD)
    return json.loads((out / "summary.json").read_text())


def folder(label: str) -> str:
    """A group's label as a folder name: Hydra reads `=` and spaces in an override's value."""
    return re.sub(r"[^\w.-]+", "_", label)


def run_groups(name: str, example: Example, gate: Gate, groups: dict[str, Runs], tmp: Path,
               seeds: tuple[int, ...] | None = None) -> tuple[dict[str, list[dict]], dict]:
    """Each group's runs, one after another in this process (under torchrun for a group of more
    processes): {group: [one row per seed]}, and each group's first full summary. `seeds`: only
    these of each group's seeds."""
    rows: dict[str, list[dict]] = {}
    first: dict[str, dict] = {}
    for label, group in groups.items():
        for seed in (s for s in group.seeds if seeds is None or s in seeds):
            overrides = (f"seed={seed}", f"mistake={group.mistake}",
                         *(o.format(tmp=tmp) for o in group.overrides))
            out = tmp / name / folder(label) / str(seed)
            summary = (run(example.name, *overrides, f"out_dir={out}") if group.processes == 1
                       else torchrun(example.name, group.processes, out, *overrides))
            row = {key: summary.get(key) for key in (*gate.keys, "wall_seconds")}
            if gate.derive is not None:
                row.update(gate.derive(summary))
            rows.setdefault(label, []).append(row)
            first.setdefault(label, summary)
            print(f"{name} {label} seed={seed}: {row}", flush=True)
    return rows, first


def run_gate(name: str, example: Example, gate: Gate, tmp: Path, figures: Path | None) -> dict:
    """{"runs": {group: [one row per seed]}, "pass": bool}: the declared runs, then what the gate's
    own measure adds (its groups join the runs; anything else it returns is kept beside them). The
    verdict is the gate's criteria on the rows."""
    rows, first = run_groups(name, example, gate, gate.runs, tmp)
    result: dict = {}
    if gate.measure:
        module, function = gate.measure.split(":")
        result = getattr(importlib.import_module(f"scripts.measure.{module}"), function)(tmp,
                                                                                       figures)
        rows.update(result.pop("runs", {}))
    if figures is not None and (gate.figure_runs or gate.rows_figure is not None):
        fig = plots.pyplot().figure(figsize=example.figure_size)
        if gate.rows_figure is not None:  # drawn from the rows and first summaries
            gate.rows_figure(rows, first, fig)
        else:  # the tour's figure, from the first seed of the named groups
            example.figure({gate.runs[label].mistake: first[label]
                            for label in gate.figure_runs}, fig)
        fig.suptitle(gate.figure_title, fontsize=9)
        plots.save(fig, figures / (gate.figure_file or f"{name}.png"))
    failed = gate.failures(rows)
    for says in failed:
        print(f"{name}: does not hold: {says}", flush=True)
    return {"runs": rows, **result, "pass": not failed}


def gates(found: dict[str, Example]) -> dict[str, tuple[Example, Gate]]:
    """Every gate of every example, by the name it has in docs/gates.json: the example's own, then
    its more_gates as <example>_<key>."""
    named: dict[str, tuple[Example, Gate]] = {}
    for example in found.values():
        if example.gate is not None:
            named[example.name] = (example, example.gate)
        for key, gate in example.more_gates.items():
            named[f"{example.name}_{key}"] = (example, gate)
    return named
