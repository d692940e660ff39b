#!/usr/bin/env bash
# Runs on the project's venv, made on first use: bash runs the next line; to Python it is a string.
''''. "$(dirname -- "$0")/_bootstrap.sh"; exec "$VENV/bin/python" "$0" "$@" # '''

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

USAGE = """Every picture in docs/img and the README's gallery table, from today's defaults and
measured JSON.

    scripts/figures.py                 the hero figure (docs/img/hero.png), the README table and
                                       the performance page's peers.png and mistake_costs.png,
                                       from docs/gates.json and docs/bench.json (seconds)
    scripts/figures.py --tour gan sac  also each named example's comparison figure,
                                       docs/img/<name>.png, from a full-budget tour of it
                                       (minutes to tens of minutes each)
    scripts/figures.py --gates gan     also the figures of those gates (docs/img/gan_mixtures.png,
                                       tbptt_bpc.png, simsiam_collapse.png), re-measuring
                                       docs/gates.json
    scripts/figures.py --check         exit 1 when the README's table is not what the JSON files
                                       say

Every picture in docs/img comes from one of these: hero.png, peers.png and mistake_costs.png from
the JSON files, <example>.png from the tour at its full budget, the rest from scripts/gates.py
--figures docs/img.
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
    """One panel per example: the pattern's measured result next to its mistake's, from the JSON
    files."""
    from statistics import mean

    import tables

    from gallery.core import plots

    gates, bench = tables.load("gates.json"), tables.load("bench.json")
    ss, ppo, sac = gates["simsiam"]["runs"], gates["ppo"]["runs"], gates["sac"]["runs"]
    digits = next(r for r in bench["finetune"] if r["setup"].startswith("digits_cnn"))
    panels = {
        "gan: modes of 8 covered": (gates["gan"]["ring8"]["mean_modes"],
                                    gates["gan"]["ring8 mistake"]["mean_modes"],
                                    "shared zero_grad"),
        "dqn: bytes saved per update": (
            next(r for r in bench["dqn"] if "bytes_ratio_target_grad_over_pattern" in r)[
                "pattern_saved_bytes_per_update"],
            next(r for r in bench["dqn"] if "bytes_ratio_target_grad_over_pattern" in r)[
                "target_grad_saved_bytes_per_update"], "target_grad"),
        "ppo: value bias (100-step limit)": (
            mean(r["value_bias"] for r in ppo["none time_limit=100"]),
            mean(r["value_bias"] for r in ppo["truncation_as_terminal time_limit=100"]),
            "truncation as terminal"),
        "sac: eval return": (mean(r["eval_return_mean"] for r in sac["none"]),
                             mean(r["eval_return_mean"] for r in sac["alpha_no_detach"]),
                             "alpha_no_detach"),
        "finetune: bytes saved for backward": (digits["frozen_saved_bytes"],
                                               digits["full_saved_bytes"], "no_freeze"),
        "tbptt: peak bytes, 16 chunks": (bench["tbptt"][0]["truncated_peak_bytes"],
                                         bench["tbptt"][0]["untruncated_peak_bytes"],
                                         "untruncated"),
        "simsiam: output std x sqrt(d)": (mean(r["output_std_sqrt_d"] for r in ss["none"]),
                                          mean(r["output_std_sqrt_d"] for r in ss["no_stop_grad"]),
                                          "no_stop_grad"),
        "vqvae: held-out reconstruction MSE": (
            mean(r["recon_mse"] for r in gates["vqvae"]["runs"]["none"]),
            mean(r["recon_mse"] for r in gates["vqvae"]["runs"]["no_straight_through"]),
            "no straight-through"),
        "a2c: eval return at 100k steps": (
            mean(r["eval_return_mean"] for r in gates["a2c"]["runs"]["none 100k"]),
            mean(r["eval_return_mean"] for r in gates["a2c"]["runs"]["value_item 100k"]),
            "value_item"),
        "ema: EMA held-out accuracy": (
            mean(r["ema_accuracy"] for r in gates["ema"]["runs"]["none"]),
            mean(r["ema_accuracy"] for r in gates["ema"]["runs"]["skip_buffers"]),
            "skip_buffers"),
    }

    def draw(fig) -> None:
        for i, (title, (pattern, mistake, label)) in enumerate(panels.items()):
            ax = fig.add_subplot(1, len(panels), i + 1)
            names, values = ["pattern"], [pattern]
            if mistake is not None:
                names, values = [*names, label], [*values, mistake]
            ax.bar(range(len(values)), values, color=["tab:green", "tab:red"][: len(values)])
            ax.set_xticks(range(len(values)), names, rotation=20, fontsize=7)
            ax.set_title(title, fontsize=8)
            ax.tick_params(axis="y", labelsize=7)

    fig = plots.pyplot().figure(figsize=(23, 3))
    draw(fig)
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
        ax.barh([j + (i - 0.5) * width for j in range(len(costs))],
                [c[key] or 0 for c in costs], width, label=label)
    ax.set_yticks(range(len(costs)), [f"{c['example']}: {c['mistake']}" for c in costs],
                  fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="gray", ls="--", lw=1)
    ax.set(xlabel="the mistake's cost over the pattern's (x, log scale; no bar: not measured)",
           title="what each mistake costs, measured side by side")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    plots.save(fig, img / "mistake_costs.png")


def tour_figures(names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "gallery", "tour", "budget=full",
                        f"examples=[{','.join(names)}]", f"out_dir={tmp}/tour"], cwd=ROOT,
                       check=True)
        for name in names:
            shutil.copy(Path(tmp) / "tour" / f"{name}.png", ROOT / "docs" / "img" / f"{name}.png")
            print(f"wrote docs/img/{name}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tour", nargs="*", default=[], metavar="EXAMPLE")
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
    if args.tour:
        tour_figures(args.tour)
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
