"""Figures without a display: the Agg backend, and one way to save."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (headless CI machines have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path | str) -> Path:
    """Under torchrun only rank 0 writes: the other ranks' figures are dropped."""
    from gallery.core import dist

    if dist.rank() == 0:
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return Path(path)


def figure(path: Path | str, draw, *args, size: tuple[float, float] = (5, 3.2), **kwargs) -> Path:
    """One-panel figure: `draw(ax, *args, **kwargs)`, saved to `path`. The examples' drawing functions
    take an `ax`, so a run's own figure and the tour's comparison share them."""
    fig, ax = pyplot().subplots(figsize=size)
    draw(ax, *args, **kwargs)
    return save(fig, path)
