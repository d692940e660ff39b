"""What a run needs before its loop, in one call: the typed config, checked; the device; CPU
threads; seeds. The first line of every example's `train()`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gallery.core import dist
from gallery.core.config import normalize_resume, to_schema
from gallery.core.device import resolve_device, set_threads
from gallery.core.job import parallel_jobs
from gallery.core.seeding import seed_everything


def prepare(cfg: Any, validate: Callable[[Any], None],
            single_thread: Callable[[Any], bool]) -> tuple[Any, torch.device]:
    """The typed config (a composed DictConfig or an instance of the schema), validated; the device
    (under torchrun: this rank's, with the process group joined); threads (`single_thread(cfg)`
    says whether `threads=auto` keeps this config on one intra-op thread: a model so small that a
    second thread costs more in handoffs than it saves); every RNG seeded (each rank draws its own
    data)."""
    cfg = to_schema(cfg)
    cfg.resume = normalize_resume(cfg.resume)
    validate(cfg)
    device = dist.setup(resolve_device(cfg.device))
    set_threads(cfg.threads, device, single_thread(cfg), jobs=parallel_jobs())
    seed_everything(cfg.seed + dist.rank(), cfg.deterministic)
    return cfg, device
