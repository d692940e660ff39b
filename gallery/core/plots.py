"""Figures without a display: the Agg backend, one way to save, and the sample scatter or grid
that the GAN's run, its tour and its gate draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gallery.core import dist


def label(mistake: str) -> str:
    """What a figure calls a run: "pattern" for mistake=none, else the mistake's name."""
    return "pattern" if mistake == "none" else mistake


def pyplot():
    """matplotlib.pyplot on the Agg backend (headless CI machines have no display)."""
    import matplotlib  # heavy and optional: imported when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    return plt


# A figure is read on a page about 850 px wide: saved at 100 dpi, at most this many inches.
PAGE_INCHES = 8.5
# The pattern is green wherever it is drawn; its mistakes take warm colours, red first.
PATTERN_COLOUR = "tab:green"
MISTAKE_COLOURS = ("tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                   "tab:gray")


def readable(fig) -> None:
    """Make a figure read at PAGE_INCHES wide: panels in one row wider than that wrap into rows of
    two, ticks and legends stay at least 8 points, and each labelled curve takes the page's colours
    (the pattern a wide green line beneath the rest; every other run a warm colour, dashed, so a
    run that follows the pattern exactly shows on it)."""
    axes = [ax for ax in fig.axes if ax.get_subplotspec() is not None]
    width, height = fig.get_size_inches()
    grid = None
    if width > PAGE_INCHES + 0.01 and len(axes) > 1 and all(
            ax.get_subplotspec().get_geometry()[0] == 1 for ax in axes):
        columns = 2
        rows = -(-len(axes) // columns)
        grid = fig.add_gridspec(rows, columns)
        for i, ax in enumerate(axes):
            ax.set_subplotspec(grid[i // columns, i % columns])
        fig.set_size_inches(PAGE_INCHES, min(height, 3.4) * rows + 0.4)
    elif width > PAGE_INCHES + 0.01:
        fig.set_size_inches(PAGE_INCHES, height * PAGE_INCHES / width)
    for ax in fig.axes:
        ax.tick_params(labelsize=9)
        lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
        if any(_is_pattern(line.get_label()) for line in lines):
            warm = iter(MISTAKE_COLOURS)
            for line in lines:
                if _is_pattern(line.get_label()):  # wide, beneath: a run on it stays in sight
                    line.set(color=PATTERN_COLOUR, zorder=2, linewidth=3.2)
                else:
                    line.set(color=next(warm, "tab:gray"), zorder=3, linestyle="--")
        if ax.get_legend() is not None:
            ax.legend(fontsize=8)
    if grid is not None and len(axes) % 2:  # wrapped with a cell to spare: the legend goes there
        with_legend = next((ax for ax in axes if ax.get_legend() is not None), None)
        if with_legend is not None:
            spare = fig.add_subplot(grid[-1, -1])
            spare.axis("off")
            spare.legend(*with_legend.get_legend_handles_labels(), loc="center", fontsize=9)
            with_legend.get_legend().remove()


def _is_pattern(name: str) -> bool:
    return name == "pattern" or name.startswith(("pattern ", "pattern,", "pattern ("))


def save(fig, path: Path | str) -> Path:
    """The figure made readable on a page (`readable`), saved at 100 dpi. Under torchrun only
    rank 0 writes: the other ranks' figures are dropped."""
    if dist.rank() == 0:
        readable(fig)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return Path(path)


def figure(path: Path | str, draw, *args, size: tuple[float, float] = (5, 3.2), panels: int = 1,
           **kwargs) -> Path:
    """A figure of `panels` side by side, `draw(ax or axes, *args, **kwargs)`, saved to `path`.
    The examples' drawing functions take the axes, so a run's own figure and the tour's
    comparison share them."""
    fig, axes = pyplot().subplots(1, panels, figsize=size)
    draw(axes, *args, **kwargs)
    return save(fig, path)


def draw_samples(ax, samples: torch.Tensor, centres: torch.Tensor | None, title: str) -> None:
    """A scatter of 2-D samples over the mode centres, or a grid of images (the run's figure and the
    tour's)."""
    if centres is not None:
        ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, label="generated")
        ax.scatter(centres[:, 0], centres[:, 1], s=40, marker="x", color="red",
                   label="mode centres")
        lim = float(centres.abs().max()) * 1.4 + 0.1
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
        ax.legend(loc="upper right", fontsize=7)
    else:
        from torchvision.utils import make_grid  # heavy and optional: only for image samples

        grid = make_grid(samples[:64], nrow=8, normalize=True, value_range=(-1, 1))
        ax.imshow(grid.permute(1, 2, 0).squeeze().numpy(), cmap="gray")
        ax.axis("off")
    ax.set_title(title, fontsize=9)


def save_samples(result: dict, centres, run, step: int, label: str) -> None:
    """A run's samples at `step` as a figure (with the modes covered, on a mixture), and on rank 0
    the last samples, for the tour's side-by-side figure."""
    title = f"{label}, step {step}"
    if centres is not None:
        title += (f"\nmodes {result['modes_covered']}/{len(centres)}, high quality "
                  f"{result['high_quality_frac']:.2f}")
    fig, ax = pyplot().subplots(figsize=(4, 4))
    draw_samples(ax, result["samples"], centres, title)
    save(fig, run.path(f"samples_step{step:06d}.png"))
    if run.is_main:
        torch.save({"samples": result["samples"][:2500], "centres": centres, "title": title},
                   run.path("samples.pt"))


def draw_learning_curve(ax, evals: list[dict], label: str, threshold: float | None = None) -> None:
    """Greedy eval return against env steps. A run's own figure and the tour's comparison both draw
    with this."""
    steps = [e["env_steps"] for e in evals]
    mean = np.array([e["eval_return_mean"] for e in evals])
    std = np.array([e["eval_return_std"] for e in evals])
    ax.plot(steps, mean, marker="o", ms=3, label=label)
    ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    if threshold is not None:
        ax.axhline(threshold, color="gray", ls="--", lw=1, label=f"solved ({threshold:g})")
    ax.set(xlabel="env steps", ylabel="greedy eval return")
    ax.legend(fontsize=8)


def curves_by_run(draw, panels: int = 1):
    """A tour figure of the runs' curves: `draw(axes, curve, label)` for each run that has one
    (its "curve"), on `panels` panels side by side (one panel: `draw` gets the axis itself)."""
    def figure(runs: dict, fig) -> None:
        axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
        for mistake, summary in runs.items():
            if "curve" in summary:
                draw(axes if panels > 1 else axes[0], summary["curve"], label(mistake))
    return figure


def draw_learning_curves(fig, runs: dict, order, pattern: str = "pattern"):
    """The tour's comparison of an RL example: each run's greedy eval return against env steps,
    in `order` (the pattern, then its mistakes), on one axis, which it returns."""
    ax = fig.add_subplot(1, 1, 1)
    for mistake in order:
        if runs.get(mistake, {}).get("evals"):
            draw_learning_curve(ax, runs[mistake]["evals"],
                                pattern if mistake == "none" else f"mistake={mistake}")
    return ax
