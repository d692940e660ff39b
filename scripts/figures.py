#!/usr/bin/env bash
# Runs on the project's venv, made on first use: bash runs the next line; to Python it is a string.
''''. "$(dirname -- "$0")/_bootstrap.sh"; exec "$VENV/bin/python" "$0" "$@" # '''

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

USAGE = """Every picture in docs/img and the README's gallery table, from today's defaults and
measured JSON.

    scripts/figures.py                 the hero figure (docs/img/hero.png), the README table and
                                       the performance page's peers.png and mistake_costs.png,
                                       from docs/gates.json and docs/bench.json (seconds)
    scripts/figures.py --gates gan     also the figures of those gates (docs/img/gan.png,
                                       gan_mixtures.png, ...), re-measuring docs/gates.json
    scripts/figures.py --check         exit 1 when the README's table is not what the JSON files
                                       say

Every picture in docs/img comes from one of these: hero.png, peers.png and mistake_costs.png from
the JSON files; <example>.png and the rest from the gates' own runs (scripts/gates.py --figures
docs/img, which --gates calls), so that each figure has one source.
"""

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "docs" / "gen")]


def readme_with_table() -> str:
    import tables

    text = (ROOT / "README.md").read_text()
    before, rest = text.split(tables.START, 1)
    _, after = rest.split(tables.END, 1)
    return before + tables.gallery_table() + after


def readable(value: float, is_bytes: bool) -> str:
    """A figure's value as a reader says it: bytes in kB, MB or GB; other values to 3 figures."""
    if is_bytes:
        for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if abs(value) >= size:
                return f"{value / size:.3g} {unit}"
        return f"{value:.0f} B"
    return f"{value:,.3g}"


def hero(path: Path) -> None:
    """One panel per example, in a grid that reads at 900 px: the metric its `EXAMPLE.measured`
    names, the pattern's measured value against its mistake's, from the JSON files."""
    import math

    import tables

    from gallery.core import plots

    panels = tables.hero_panels()
    columns = 2
    rows = math.ceil(len(panels) / columns)
    fig = plots.pyplot().figure(figsize=(9, 1.45 * rows + 0.3))
    for i, (name, panel) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, columns, i + 1)
        values = [panel.pattern, panel.mistake]
        ax.barh([0, 1], values, color=["tab:green", "tab:red"], height=0.6)
        ax.set_yticks([0, 1], ["pattern", panel.mistake_label], fontsize=9)
        ax.invert_yaxis()
        ax.set_title(f"{name}: {panel.metric}", fontsize=10, loc="left")
        ax.axvline(0, color="black", lw=0.6)
        span = max(abs(v) for v in values) or 1.0
        for y, value in enumerate(values):  # each value written at its bar's end: no axis needed
            ax.text(value + (0.02 if value >= 0 else -0.02) * span, y,
                    readable(value, "bytes" in panel.metric), va="center",
                    ha="left" if value >= 0 else "right", fontsize=9)
        low, high = min(0, *values), max(0, *values)
        ax.set_xlim(low - 0.4 * span * (low < 0), high + 0.3 * span * (high > 0))
        ax.set_xticks([])
        for side in ("top", "right", "bottom"):
            ax.spines[side].set_visible(False)
    fig.suptitle("Each pattern next to its mistake, as measured (docs/gates.json, "
                 "docs/bench.json)", fontsize=11)
    plots.save(fig, path)


def performance_figures(img: Path) -> None:
    """The performance page's two pictures, from docs/bench.json: the gallery against its peers
    (peers.png), and what each mistake costs (mistake_costs.png)."""
    import tables

    from gallery.core import plots

    speeds, solves = tables.peer_speeds(), tables.times_to_solve()
    fig = plots.pyplot().figure(figsize=(12, 3.6))
    ax = fig.add_subplot(1, 2, 1)
    labels = [f"{s['algorithm']} vs {s['peer']}" for s in speeds]
    ax.barh(range(len(speeds)), [s["speed"] for s in speeds],
            color=["tab:green" if s["speed"] >= 1 else "tab:red" for s in speeds])
    ax.set_yticks(range(len(speeds)), labels, fontsize=8)
    ax.axvline(1.0, color="gray", ls="--", lw=1)
    ax.set(xlabel="gallery speed / peer speed (x; > 1: the gallery is faster)",
           title="same settings, side by side")
    ax.invert_yaxis()
    ax = fig.add_subplot(1, 2, 2)
    if solves:
        width = 0.38
        for i, (side, key) in enumerate((("the gallery", "gallery_seconds"),
                                         ("Stable-Baselines3", "sb3_seconds"))):
            ax.bar([j + (i - 0.5) * width for j in range(len(solves))],
                   [s[key] for s in solves], width, label=side)
        ax.set_xticks(range(len(solves)), [f"{s['algorithm']}, {s['env_id']}" for s in solves])
        ax.set(ylabel="seconds to solve (median of seeds)",
               title="time to solve, each at its own settings")
        ax.legend(fontsize=8)
    plots.save(fig, img / "peers.png")
    costs = tables.mistake_costs()
    fig = plots.pyplot().figure(figsize=(9, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.38
    for i, (key, label) in enumerate((("time", "time per step"),
                                      ("bytes", "bytes held for backward"))):
        # from 1 (as costly as the pattern) to the ratio, so a mistake that costs less points left
        ax.barh([j + (i - 0.5) * width for j in range(len(costs))],
                [(c[key] or 1) - 1 for c in costs], width, left=1, label=label)
    ax.set_yticks(range(len(costs)), [f"{c['example']}: {c['mistake']}" for c in costs],
                  fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="gray", ls="--", lw=1)
    ax.set(xlabel="the mistake's cost over the pattern's (x, log scale; no bar: not measured)",
           title="what each example's costliest mistake costs (sources: the performance page)")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    plots.save(fig, img / "mistake_costs.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gates", nargs="*", default=[], metavar="EXAMPLE")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = readme_with_table()
    if args.check:
        same = text == (ROOT / "README.md").read_text()
        print("the README's table is up to date" if same
              else "the README's table is stale: run scripts/figures.py")
        return 0 if same else 1
    (ROOT / "README.md").write_text(text)
    hero(ROOT / "docs" / "img" / "hero.png")
    performance_figures(ROOT / "docs" / "img")
    print("wrote README.md's gallery table, docs/img/hero.png, peers.png and mistake_costs.png")
    # the gate's own figure, and its entry in docs/gates.json, measured again
    for name in args.gates:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "gates.py"), name, "--json",
                        str(ROOT / "docs" / "gates.json"), "--figures",
                        str(ROOT / "docs" / "img")], cwd=ROOT, check=True)
    if args.gates:  # the table and the hero read the gates just measured
        (ROOT / "README.md").write_text(readme_with_table())
        hero(ROOT / "docs" / "img" / "hero.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
