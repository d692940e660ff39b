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


def hero(path: Path) -> None:
    """One panel per example, in a grid that reads at 850 px: the metric its `EXAMPLE.measured`
    names, the pattern's measured value (green) against its mistake's (red), and which way is
    better (the pattern's side of the mistake)."""
    import math
    import textwrap

    import face
    import tables

    from gallery.core import plots

    panels = tables.hero_panels()
    columns = 2
    rows = math.ceil(len(panels) / columns)
    fig = plots.pyplot().figure(figsize=(plots.PAGE_INCHES, 1.55 * rows + 0.4))
    for i, (name, panel) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, columns, i + 1)
        values = [panel.pattern, panel.mistake]
        ax.barh([0, 1], values, color=[plots.PATTERN_COLOUR, plots.MISTAKE_COLOURS[0]],
                height=0.6)
        ax.invert_yaxis()
        better = panel.better or ("higher" if panel.pattern > panel.mistake else "lower")
        ax.set_title("\n".join(textwrap.wrap(f"{name}: {panel.metric} ({better} is better)",
                                              52)), fontsize=9, loc="left")
        ax.axvline(0, color="black", lw=0.6)
        span = max(abs(v) for v in values) or 1.0
        for y, (value, who) in enumerate(zip(values, ("pattern", panel.mistake_label))):
            # each value and whose it is, right of its bar (of the zero line for a negative one)
            ax.text(max(value, 0) + 0.02 * span, y,
                    f"{face.shown(panel.metric, value)}  {who}", va="center",
                    ha="left", fontsize=8.5)
        low, high = min(0, *values), max(0, *values)
        ax.set_xlim(1.05 * low, high + 1.1 * span)
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ("top", "right", "bottom", "left"):  # the zero line is the one axis
            ax.spines[side].set_visible(False)
    fig.suptitle("Each pattern (green) next to its mistake (red), as measured", fontsize=11)
    plots.save(fig, path)


def performance_figures(img: Path) -> None:
    """The performance page's two pictures, from docs/bench.json: the gallery against its peers
    (peers.png), and what each mistake costs (mistake_costs.png)."""
    import math

    import tables

    from gallery.core import plots

    speeds, solves = tables.peer_speeds(), tables.times_to_solve()
    fig = plots.pyplot().figure(figsize=(plots.PAGE_INCHES, 0.3 * len(speeds) + 4.6))
    grid = fig.add_gridspec(2, 1, height_ratios=[0.3 * len(speeds) + 0.8, 3.2])
    ax = fig.add_subplot(grid[0])
    labels = [f"{s['algorithm']} vs {s['peer']}" for s in speeds]
    ax.barh(range(len(speeds)), [s["speed"] for s in speeds],
            color=["tab:blue" if s["speed"] >= 1 else "tab:gray" for s in speeds])
    for y, s in enumerate(speeds):
        ax.text(s["speed"], y, f" {s['speed']:.2f}x", va="center", fontsize=8)
    ax.set_yticks(range(len(speeds)), labels, fontsize=9)
    ax.axvline(1.0, color="black", ls="--", lw=1)
    ax.set_xlim(0, 1.15 * max(s["speed"] for s in speeds))  # room for the last label
    ax.set(xlabel="the gallery's speed over the peer's (> 1: the gallery is faster)",
           title="same settings, side by side")
    ax.invert_yaxis()
    ax = fig.add_subplot(grid[1])
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
    fig = plots.pyplot().figure(figsize=(plots.PAGE_INCHES, 0.32 * len(costs) + 1.4))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.38
    finite = [c[k] for c in costs for k in ("time", "bytes") if c[k] not in (None, math.inf)]
    top = max(finite) * 2
    for i, (key, label, colour) in enumerate((("time", "time per step", "tab:red"),
                                              ("bytes", "bytes held for backward",
                                               "tab:orange"))):
        # from 1 (as costly as the pattern) to the ratio, so a mistake that costs less points left
        ys = [j + (i - 0.5) * width for j in range(len(costs))]
        ax.barh(ys, [min(c[key] or 1, top) - 1 for c in costs], width, left=1, label=label,
                color=colour)
        for y, c in zip(ys, costs):
            if c[key] is None:
                ax.text(1.02, y, "not measured", va="center", fontsize=7, color="gray")
            elif c[key] == math.inf:  # the pattern holds none: no ratio, the bar runs off
                ax.text(top, y, "held where the pattern holds 0 B ", va="center", ha="right",
                        fontsize=7, color="white")
    ax.set_yticks(range(len(costs)), [f"{c['example']}: {c['mistake']}" for c in costs],
                  fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="gray", ls="--", lw=1)
    ax.set(xlabel="the mistake's cost over the pattern's (x, log scale)",
           title="what each example's costliest mistake costs")
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
