"""Learning-rate schedules by name, so every example spells them the same way."""

from __future__ import annotations

import math

import torch

SCHEDULES = ("constant", "linear", "cosine")


def lr_schedule(optimizer: torch.optim.Optimizer, kind: str, total_steps: int,
                fixed_groups: tuple[int, ...] = ()) -> torch.optim.lr_scheduler.LambdaLR:
    """`constant`; `linear`: decay to zero by `total_steps`, which sharpens what was learned;
    `cosine`: half a cosine from 1 down to 0 at `total_steps`. The param groups whose index is in
    `fixed_groups` keep their learning rate (SimSiam's predictor)."""
    factors = {"constant": lambda i: 1.0,
               "linear": lambda i: max(0.0, 1 - i / total_steps),
               "cosine": lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total_steps)
                                                       / total_steps))}
    if kind not in factors:
        raise ValueError(f"unknown lr schedule {kind!r}; choose from {SCHEDULES}")
    groups = range(len(optimizer.param_groups))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [factors["constant" if g in fixed_groups else kind] for g in groups])
