"""Running an example's learning gate (its `EXAMPLE.gate`): one training run per seed of each
group, in this process, one after another, so the wall times are the ones a user would see.
`scripts/gates.py` is the command; this module is what it runs."""

from __future__ import annotations

import importlib
import re
import time
from pathlib import Path

from gallery.core import plots
from gallery.core.cli import compose
from gallery.core.registry import Example, Gate


def run(example: str, *overrides: str) -> dict:
    """One training run through the example's own config, in this process, with its wall time."""
    module = importlib.import_module(f"gallery.{example}")
    cfg = compose(example, ["device=cpu", *overrides])
    start = time.perf_counter()
    summary = module.train(cfg)
    summary["wall_seconds"] = time.perf_counter() - start
    return summary


def folder(label: str) -> str:
    """A group's label as a folder name: Hydra reads `=` and spaces in an override's value."""
    return re.sub(r"[^\w.-]+", "_", label)


def run_gate(name: str, example: Example, gate: Gate, tmp: Path, figures: Path | None) -> dict:
    """{"runs": {group: [one row per seed]}, "pass": bool}, or what the gate's own measure
    returns."""
    if gate.measure:
        module, function = gate.measure.split(":")
        return getattr(importlib.import_module(f"scripts.measure.{module}"), function)(tmp, figures)
    rows: dict[str, list[dict]] = {}
    first: dict[str, dict] = {}
    for label, group in gate.runs.items():
        for seed in group.seeds:
            summary = run(example.name, f"seed={seed}", f"mistake={group.mistake}",
                          *(o.format(tmp=tmp) for o in group.overrides),
                          f"out_dir={tmp}/{name}/{folder(label)}/{seed}")
            row = {key: summary[key] for key in gate.keys}
            if gate.derive is not None:
                row.update(gate.derive(summary))
            rows.setdefault(label, []).append(row)
            first.setdefault(label, summary)
            print(f"{name} {label} seed={seed}: {row}", flush=True)
    if figures is not None and (gate.figure_runs or gate.rows_figure is not None):
        fig = plots.pyplot().figure(figsize=example.figure_size)
        if gate.rows_figure is not None:  # drawn from the rows themselves
            gate.rows_figure(rows, fig)
        else:  # the tour's figure, from the first seed of the named groups
            example.figure({gate.runs[label].mistake: first[label]
                            for label in gate.figure_runs}, fig)
        fig.suptitle(gate.figure_title, fontsize=9)
        plots.save(fig, figures / (gate.figure_file or f"{name}.png"))
    return {"runs": rows, "pass": bool(gate.passes(rows))}


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
