"""2-D Gaussian mixtures (the GAN mode-collapse benchmark) and the VEEGAN/PacGAN quality metrics."""

from __future__ import annotations

import math

import torch

from gallery.core.errors import ConfigError


def ring_centres(modes: int, radius: float) -> torch.Tensor:
    angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    return torch.stack([radius * angles.cos(), radius * angles.sin()], dim=1).float()


def grid_centres(side: int, spacing: float) -> torch.Tensor:
    offsets = (torch.arange(side, dtype=torch.float32) - (side - 1) / 2) * spacing
    xs, ys = torch.meshgrid(offsets, offsets, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def mixture(layout: str, modes: int, radius: float, std: float, device: torch.device, seed: int,
            standardize: bool = False) -> GaussianMixture:
    """`modes` Gaussians on a ring of `radius`, or on a square grid with `radius` spacing."""
    if layout == "ring":
        return GaussianMixture(ring_centres(modes, radius), std, device, seed, standardize)
    side = math.isqrt(modes)
    if side * side != modes:
        raise ConfigError(f"data.modes={modes}: a grid needs a square number of modes")
    return GaussianMixture(grid_centres(side, radius), std, device, seed, standardize)


class GaussianMixture:
    """Equal-weight isotropic Gaussians around fixed centres; infinite data, sampled on `device`.

    With `standardize`, `sample()` returns the draws in units of the data's per-coordinate std, so
    a model trained on them works at the same scale whatever the mixture's size; `to_data` maps the
    model's samples back. `centres` and `std` stay in data units, where the metrics and figures are.
    """

    def __init__(self, centres: torch.Tensor, std: float, device: torch.device, seed: int,
                 standardize: bool = False):
        self.centres = centres.to(device)
        self.std = std
        self.generator = torch.Generator(device=device).manual_seed(seed)
        # per coordinate
        spread = float((self.centres.var(dim=0, unbiased=False).mean() + std**2).sqrt())
        self.unit = spread if standardize else 1.0

    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.unit

    def sample(self, n: int) -> torch.Tensor:
        g = self.generator
        idx = torch.randint(len(self.centres), (n,), device=self.centres.device, generator=g)
        noise = torch.randn(n, 2, device=self.centres.device, generator=g)
        return (self.centres[idx] + self.std * noise) / self.unit


def mode_metrics(samples: torch.Tensor, centres: torch.Tensor, std: float,
                 min_per_mode: int) -> dict:
    """A sample is high quality within 3 std of its nearest centre (VEEGAN); a mode is covered
    when at least `min_per_mode` high-quality samples fall on it (PacGAN counts it this way too)."""
    dist = torch.cdist(samples.float(), centres.to(samples.device).float())
    nearest_dist, nearest = dist.min(dim=1)
    good = nearest_dist <= 3 * std
    per_mode = torch.bincount(nearest[good], minlength=len(centres))
    return {
        "modes_covered": int((per_mode >= min_per_mode).sum()),
        "high_quality_frac": float(good.float().mean()),
        "samples_per_mode": per_mode.tolist(),
    }
