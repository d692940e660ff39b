"""One comparison figure per example for the tour's report: the pattern next to its mistakes."""

from __future__ import annotations

from pathlib import Path

from gallery.core import plots

plt = plots.pyplot()


def _latest(run_dir: str, pattern: str) -> Path | None:
    found = sorted(Path(run_dir).glob(pattern))
    return found[-1] if found else None


def gan(runs: dict, ax_row) -> None:
    for ax, mistake in zip(ax_row, ("none", "retain_graph_shared_zero_grad")):
        image = _latest(runs[mistake]["run_dir"], "samples_step*.png") if mistake in runs else None
        ax.axis("off")
        if image is not None:
            ax.imshow(plt.imread(image))
            ax.set_title("pattern" if mistake == "none" else mistake, fontsize=9)


def dqn(runs: dict, ax) -> None:
    for mistake in ("none", "no_target"):
        evals = runs.get(mistake, {}).get("evals") or []
        if evals:
            ax.plot([e["env_steps"] for e in evals], [e["eval_return_mean"] for e in evals], marker="o", ms=3,
                    label="pattern (target network)" if mistake == "none" else "no_target")
    threshold = runs.get("none", {}).get("reward_threshold")
    if threshold:
        ax.axhline(threshold, color="gray", ls="--", lw=1, label=f"solved ({threshold:g})")
    ax.set(xlabel="env steps", ylabel="greedy eval return")
    ax.legend(fontsize=8)


def finetune(runs: dict, axes) -> None:
    names = [m for m in ("none", "no_freeze", "bn_train") if m in runs]
    labels = ["frozen (pattern)" if m == "none" else m for m in names]
    axes[0].bar(labels, [runs[m]["sec_per_step"] * 1e3 for m in names], color="C0")
    axes[0].set(ylabel="ms per step")
    axes[1].bar(labels, [runs[m]["saved_bytes_per_step"] / 2**10 for m in names], color="C1")
    axes[1].set(ylabel="KiB saved for backward per step")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)


def tbptt(runs: dict, ax) -> None:
    capped = len(runs.get("retain_graph", {}).get("saved_bytes_per_chunk") or [])
    for mistake in ("none", "retain_graph"):
        saved = runs.get(mistake, {}).get("saved_bytes_per_chunk") or []
        if capped:  # show the pattern over the same chunks the capped mistake ran
            saved = saved[: int(capped * 1.25)]
        if saved:
            ax.plot(range(1, len(saved) + 1), [b / 2**20 for b in saved], marker=".", ms=3,
                    label="detach each chunk (pattern)" if mistake == "none" else "retain_graph (full BPTT)")
    ax.set(xlabel="chunk", ylabel="MiB held for backward", ylim=(0, None))
    ax.legend(fontsize=8)


def draw(example: str, runs: dict, out: Path) -> Path:
    if example in ("gan", "finetune"):
        fig, axes = plt.subplots(1, 2, figsize=(8, 4) if example == "gan" else (8, 3.2))
        (gan if example == "gan" else finetune)(runs, axes)
    else:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        (dqn if example == "dqn" else tbptt)(runs, ax)
    fig.suptitle(f"{example}: pattern vs mistake", fontsize=10)
    return plots.save(fig, out / f"{example}.png")
