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


def figure(path: Path | str, draw, *args, size: tuple[float, float] = (5, 3.2), panels: int = 1,
           **kwargs) -> Path:
    """A figure of `panels` side by side, `draw(ax or axes, *args, **kwargs)`, saved to `path`.
    The examples' drawing functions take the axes, so a run's own figure and the tour's
    comparison share them."""
    fig, axes = pyplot().subplots(1, panels, figsize=size)
    draw(axes, *args, **kwargs)
    return save(fig, path)
