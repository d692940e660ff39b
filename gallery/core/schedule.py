"""Learning-rate schedules by name, so every example spells them the same way."""

from __future__ import annotations

import torch

SCHEDULES = ("constant", "linear")


def lr_schedule(optimizer: torch.optim.Optimizer, kind: str, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """`constant`, or `linear`: decay to zero by `total_steps`, which sharpens what was learned."""
    if kind == "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: max(0.0, 1 - i / total_steps))
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    raise ValueError(f"unknown lr schedule {kind!r}; choose from {SCHEDULES}")
