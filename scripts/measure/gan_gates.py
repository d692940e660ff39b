"""The GAN's two gates (`scripts/gates.py gan` and `gan_sizes`): Hydra sweeps of the default config
over the named mixtures and sizes, two joblib jobs at a time, tabled by scripts/sweep_report.py.
gallery/gan.py's EXAMPLE names these (`Gate(measure="gan_gates:...")`): their runs are sweeps,
not a table of seeds in one process."""

from __future__ import annotations

import itertools
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from gallery import gan
from gallery.core import plots
from scripts.sweep_report import report

ROOT = Path(__file__).resolve().parents[2]


# One default config for every named 2-D mixture, run as Hydra sweeps (2 joblib jobs at a time, one
# thread each) and tabled by scripts/sweep_report.py. The ring8 default before standardization runs
# in the same conditions: the time reference. Each sweep's overrides and seeds.
GAN_SWEEPS = {
    "named": (["data=ring8,grid25"], "0,1,2,3,4"),
    "mixture": (["data=mixture", "data.modes=12,16"], "0,1,2,3,4"),
    "mistake": (["data=ring8", "mistake=retain_graph_shared_zero_grad"], "0,1,2,3"),
    "old_default": (["data=ring8", "standardize=false", "hidden=128", "steps=12000", "r1_every=1"],
                    "0,1"),
}
GAN_METRICS = ("modes_covered", "high_quality_frac", "wall_seconds")


def gan_sweep(name: str, out: Path) -> list[dict]:
    overrides, seeds = GAN_SWEEPS[name]
    cmd = [sys.executable, "-m", "gallery.gan", "-m", *overrides, f"seed={seeds}",
           "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "progress=false", "device=cpu",
           f"out_dir={out}"]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(report(out, list(GAN_METRICS), "seed", listed=True), flush=True)
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/summary.json"))]


def gan_figure(root: Path, out: Path) -> None:
    """Seed 0's last samples on each mixture, side by side."""
    jobs = [*sorted((root / "named").glob("*seed=0")), *sorted((root / "mixture").glob("*seed=0"))]
    fig = plots.pyplot().figure(figsize=(4 * len(jobs), 4.4))
    for i, job in enumerate(jobs, start=1):
        saved = torch.load(job / "samples.pt", weights_only=True)
        overrides = dict(kv.split("=") for kv in job.name.split("_", 1)[1].split(","))
        ring = overrides["data"] == "mixture"
        name = f"ring{len(saved['centres'])} (data=mixture)" if ring else overrides["data"]
        plots.draw_samples(fig.add_subplot(1, len(jobs), i), saved["samples"], saved["centres"],
                         f"{name}, seed 0\n" + saved["title"].split("\n")[-1])
    plots.save(fig, out / "gan_mixtures.png")


def mixtures(tmp: Path, figures: Path | None) -> dict:
    """The runs of the gan gate (its criteria: gan.EXAMPLE.gate), by group, with each group's
    means beside them. The 5% on wall time is about the spread of one sweep's wall times, two jobs
    at once on 2 cores; the gate's JSON keeps every time."""
    groups: dict[str, list[dict]] = {}
    for name in GAN_SWEEPS:
        for s in gan_sweep(name, tmp / "gan" / name):
            # a mixture is a ring here (data=mixture's layout): named as gan_sizes names it
            label = s["data"] if s["data"] != "mixture" else f"ring{len(s['samples_per_mode'])}"
            label += f" {name}" if name in ("mistake", "old_default") else ""
            groups.setdefault(label, []).append({k: s[k] for k in GAN_METRICS})
    out = {"runs": groups}
    for label, runs in groups.items():
        out[label] = {"mean_modes": statistics.mean(r["modes_covered"] for r in runs),
                      "mean_high_quality": statistics.mean(r["high_quality_frac"] for r in runs),
                      "mean_wall_seconds": statistics.mean(r["wall_seconds"] for r in runs)}
    if figures is not None:
        gan_figure(tmp / "gan", figures)
    return out


# The mixtures no config was tuned for (gan.SIZES), at PacGAN's std-to-spacing ratio (std = spacing
# / 40, the spacing being the distance between neighbouring centres): rings on radius 2 and grids
# with spacing 2, the default config, seeds 0 and 1 of each.
def spacing(layout: str, modes: int, radius: float = 2.0) -> float:
    return 2 * radius * math.sin(math.pi / modes) if layout == "ring" else radius


def sizes(tmp: Path, figures: Path | None) -> dict:
    """The runs of the gan_sizes gate (its criteria, one per mixture: gan.EXAMPLE.more_gates), by
    mixture. `holds_up_to` is, per layout, the largest size for which its criterion and every
    smaller one's hold: where gallery.gan's one-time warning starts (gan.MEASURED_MODES, checked
    against this file by a test)."""
    out: dict = {"std_over_spacing": 1 / 40, "runs": {}}
    for name, (layout, modes) in gan.SIZES.items():
        std = spacing(layout, modes) / 40
        sweep = ["data=mixture", f"data.layout={layout}", f"data.modes={modes}", "data.radius=2",
                 f"data.std={std:.6g}", "seed=0,1"]
        cmd = [sys.executable, "-m", "gallery.gan", "-m", *sweep, "hydra/launcher=joblib",
               "hydra.launcher.n_jobs=2", "progress=false", "device=cpu",
               f"out_dir={tmp / 'gan_sizes' / name}"]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
        runs = [json.loads(p.read_text())
                for p in sorted((tmp / "gan_sizes" / name).glob("*/summary.json"))]
        out["runs"][name] = [{k: r[k] for k in (*GAN_METRICS, "steps")} for r in runs]
        mean = {k: statistics.mean(r[k] for r in runs) for k in GAN_METRICS}
        reference = out["ring8"]["mean_wall_seconds"] if "ring8" in out else mean["wall_seconds"]
        out[name] = {"std": std, "steps": runs[0]["steps"], "mean_modes": mean["modes_covered"],
                     "mean_high_quality": mean["high_quality_frac"],
                     "mean_wall_seconds": mean["wall_seconds"],
                     "wall_over_ring8": mean["wall_seconds"] / reference}
        criterion = next(c for c in gan.EXAMPLE.more_gates["sizes"].criteria
                         if c.reads[0] == name)
        out[name]["pass"] = criterion.holds_on(out["runs"])
        print(f"{name}: {out[name]}", flush=True)
    out["holds_up_to"] = {}
    for layout in ("ring", "grid"):  # gan.SIZES lists each layout smallest first
        sizes = [(modes, name) for name, (lay, modes) in gan.SIZES.items() if lay == layout]
        passing = itertools.takewhile(lambda size: out[size[1]]["pass"], sizes)
        out["holds_up_to"][layout] = max((modes for modes, _ in passing), default=0)
    return out
