"""What tbptt's gate adds to its declared run (`scripts/gates.py tbptt`): validation bits per char
against seconds of training, read off the curve of one long run. gallery/tbptt.py's EXAMPLE names
it (`Gate(measure="tbptt_gate:curve")`): its result is a curve, not a table of seeds."""

from __future__ import annotations

from pathlib import Path

from gallery.core import plots
from scripts.measure.gate import run


def curve(tmp: Path, figures: Path | None) -> dict:
    longer = run("tbptt", "seed=0", f"out_dir={tmp}/tbptt_long", "steps=10000", "eval_every=500")
    curve = longer["curve"]
    points = [(round(c["seconds"]), round(c["val_bpc"], 3)) for c in curve]
    print(f"tbptt BPC against time: {points}", flush=True)
    if figures is not None:
        plt = plots.pyplot()
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([c["seconds"] for c in curve], [c["val_bpc"] for c in curve], marker="o", ms=3)
        ax.axhline(2.3, color="gray", ls="--", lw=1, label="target 2.3 within 180 s")
        ax.set(xlabel="seconds of training (2-core CPU)", ylabel="validation bits per char",
               title="tbptt on pydoc, default model, seed 0")
        ax.legend(fontsize=8)
        plots.save(fig, figures / "tbptt_bpc.png")
    return {"runs": {"10k steps": [summarise(curve)]}, "curve": curve}


def summarise(curve: list[dict]) -> dict:
    """The long run's row: where it ended, and the best it reached within 180 s of training (None
    when no evaluation came that early)."""
    early = [c["val_bpc"] for c in curve if c["seconds"] <= 180]
    return {"val_bpc": curve[-1]["val_bpc"],
            "val_bpc_within_180_s": min(early, default=None),
            "training_seconds": curve[-1]["seconds"]}
