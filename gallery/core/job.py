"""What Hydra says about the job that is running: its run dir, whether it is one job of a `-m`
sweep, its command-line overrides, and how many sweep jobs share this machine. Every answer has a
default for a run outside Hydra (tests, the compose API, a script)."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


def hydra_run_dir() -> Path | None:
    if not HydraConfig.initialized():
        return None
    return Path(HydraConfig.get().runtime.output_dir)


def multirun() -> bool:
    """True inside a Hydra `-m` sweep job."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def task_overrides() -> list[str]:
    """The command line's overrides of this run (a sweep job's own values), as Hydra records
    them."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def parallel_jobs() -> int:
    """How many sweep jobs run at once on this machine: the joblib launcher's n_jobs (-1: one per
    core, -2: all but one, as joblib reads it), else 1 (one job at a time, or one per SLURM
    task)."""
    if not multirun():
        return 1
    launcher = HydraConfig.get().launcher
    if "Joblib" not in str(launcher.get("_target_", "")):
        return 1
    n, cores = int(launcher.get("n_jobs") or 1), os.cpu_count() or 1
    return max(1, n if n > 0 else cores + 1 + n)
