"""The run directory, the metrics log, summary.json and the progress bar.

Only rank 0 writes (torchrun sets RANK); the other ranks get a Run whose writes are no-ops.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from gallery.core.io import atomic_write


def env_rank() -> int:
    """This process's rank under torchrun (0 when run alone): only rank 0 writes."""
    return int(os.environ.get("RANK", "0"))


def resolve_out_dir(out_dir: str | None, example: str) -> Path:
    """An explicit out_dir wins; under `@hydra.main` it is Hydra's run dir; else a fresh timestamped dir."""
    if out_dir:
        return Path(out_dir)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path("outputs") / example / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _json_safe(value.item())
    return value


class Run:
    """One run's outputs: `.hydra/config.yaml`, `metrics.jsonl`, `summary.json`, figures, checkpoints."""

    def __init__(self, out_dir: Path | str, config: Any = None, tensorboard: bool = False):
        self.dir = Path(out_dir)
        self.is_main = env_rank() == 0
        self._metrics = None
        self._tb = None
        if not self.is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            atomic_write(self.dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(config))
        self._metrics = open(self.dir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("tensorboard is not installed; logging to metrics.jsonl only", file=sys.stderr)
            else:
                self._tb = SummaryWriter(self.dir / "tb")

    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoints"

    def path(self, name: str) -> Path:
        return self.dir / name

    def log(self, step: int, **metrics: Any) -> None:
        if self._metrics is None:
            return
        row = _json_safe({"step": step, **metrics})
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)

    def write_summary(self, summary: dict) -> dict:
        summary = _json_safe({**summary, "out_dir": str(self.dir)})
        if self.is_main:
            atomic_write(self.dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(path: Path | str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def progress(total: int, desc: str, enabled: bool | None = None, initial: int = 0) -> tqdm:
    """A tqdm bar that is off when stderr is not a terminal (CI logs, pytest), unless forced."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, initial=initial, disable=not enabled or env_rank() != 0,
                dynamic_ncols=True, leave=False)


def prepare(cfg: Any, validate: Callable[[Any], None], small_model: Callable[[Any], bool]) -> tuple[Any, torch.device]:
    """The first hop of every `train`: the typed config, checked; the device; CPU threads; seeds."""
    from gallery.core.config import to_schema
    from gallery.core.device import resolve_device, set_threads
    from gallery.core.seeding import seed_everything

    cfg = to_schema(cfg)
    validate(cfg)
    device = resolve_device(cfg.device)
    set_threads(cfg.threads, device, small_model(cfg))
    seed_everything(cfg.seed, cfg.deterministic)
    return cfg, device
