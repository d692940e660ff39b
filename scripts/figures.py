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

    scripts/figures.py                 the hero figure (docs/img/hero.png) and the README table,
                                       from docs/gates.json and docs/bench.json (seconds)
    scripts/figures.py --tour gan sac  also each named example's comparison figure,
                                       docs/img/<name>.png, from a full-budget tour of it
                                       (minutes to tens of minutes each)
    scripts/figures.py --gates gan     also the figures of those gates (docs/img/gan_mixtures.png,
                                       tbptt_bpc.png, simsiam_collapse.png), re-measuring
                                       docs/gates.json
    scripts/figures.py --check         exit 1 when the README's table is not what the JSON files
                                       say

Every picture in docs/img comes from one of these: hero.png from the JSON files, <example>.png from
the tour at its full budget, the rest from scripts/gates.py --figures docs/img.
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
        "dqn: env steps to solve": (mean(r["first_solved_step"] for r in gates["dqn"]["runs"]),
                                    None, ""),
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
    print("wrote README.md's gallery table and docs/img/hero.png")
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
