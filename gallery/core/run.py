"""The run directory, the metrics log, summary.json and the progress bar.

Only rank 0 writes (torchrun sets RANK); the other ranks get a Run whose writes are no-ops.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from gallery.core import dist
from gallery.core.checkpoint import (
    LAST,
    capture,
    load_checkpoint,
    load_latest,
    restore,
    save_checkpoint,
)
from gallery.core.errors import (
    ConfigError,
    Diverged,
    ExplainedMistake,
    GalleryError,
    Interrupted,
    RunFault,
)
from gallery.core.io import atomic_write, missing_folders, remove_empty
from gallery.core.job import hydra_run_dir, multirun, task_overrides
from gallery.core.seeding import rng_state, set_rng_state

try:
    import fcntl  # POSIX; on Windows a run dir is not locked
except ImportError:  # pragma: no cover
    fcntl = None

LOCK = ".lock"  # the run dir's lock file: "pid host" of the process that holds it


def lock_run_dir(run_dir: Path) -> int | None:
    """Hold an exclusive OS lock on `run_dir` (made here if it does not exist) for as long as the
    returned descriptor stays open; the OS lets it go when the process ends, even by SIGKILL. A
    run dir another process holds is a ConfigError naming the holder."""
    if fcntl is None:
        return None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:  # no permission, a file in the way, a full or read-only disk, ...
        reason = (err.strerror or str(err)).lower()
        raise ConfigError(f"out_dir={run_dir}: cannot be made or written, {reason}") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").split() or ["?", "?"]
        os.close(fd)
        pid, host = (holder + ["?"])[:2]
        raise ConfigError(f"out_dir={run_dir} is in use by another run (pid {pid} on {host}): "
                          f"wait for it to end, or pick another out_dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return fd


def unlock_run_dir(fd: int | None) -> None:
    """Let the run dir go (the lock file stays: removing it would let two later runs lock two
    different files)."""
    if fd is not None:
        os.close(fd)


def resolve_out_dir(out_dir: str | None, example: str) -> Path:
    """Under `-m`, the job's own folder (`<out_dir>/<job number>_<its overrides>`); else an explicit
    out_dir; under Hydra, its run dir; else a fresh timestamped dir."""
    if multirun():  # configs/hydra.yaml names the job's folder
        return hydra_run_dir()
    if out_dir:
        return Path(out_dir)
    stamp = datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    run_dir = hydra_run_dir() or Path("outputs") / example / stamp
    # under torchrun, rank 0's: the ranks may start a second apart
    return Path(dist.agree(str(run_dir)))


def resume_source(out_dir: Path, resume: str | bool) -> Path | None:
    """The checkpoint a run resumes from: `out_dir`'s last one for resume=true, the path given
    otherwise; None when it does not resume."""
    if resume in (True, "true"):
        return Path(out_dir) / "checkpoints" / LAST
    return Path(resume) if resume else None


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
    """One run's outputs: `.hydra/config.yaml`, `metrics.jsonl`, `summary.json`, figures,
    checkpoints.

    Nothing is lost without a word: a fresh run into a folder that holds a run is refused (unless
    `overwrite`), `resume` needs a checkpoint and keeps the run's config, and resuming drops the
    metrics rows logged after the checkpoint it resumes from. As a context manager it also turns
    SIGINT/SIGTERM into a clean stop at the end of the current step (`stop_if_asked`), and records a
    mistake that raised its known error in summary.json (`"status": "raised"`)."""

    RESULTS = ("summary.json", "metrics.jsonl", "checkpoints")

    def __init__(self, out_dir: Path | str, config: Any = None, tensorboard: bool = False,
                 resume: str | bool = "", overwrite: bool = False):
        self.dir = Path(out_dir)
        self.is_main = dist.rank() == 0
        resume = "true" if resume is True else (resume or "")
        # resume="true" continues this folder's run; a path starts a new run here from that
        # checkpoint.
        self.resume, self.config = resume, config
        self.continuing = resume == "true"
        self.resume_from = resume_source(self.dir, resume)
        self.stop_signal: int | None = None
        # a summary's wall_seconds: this process's time in the run
        self.started = time.perf_counter()
        self._metrics = None
        self._tb = None
        self._lock: int | None = None
        self._handlers: dict = {}
        if not self.is_main:
            return
        if self.resume_from is not None and not self.resume_from.is_file():
            raise ConfigError(f"resume={resume}: there is no checkpoint at {self.resume_from}; "
                              f"start without resume")
        self._claim(overwrite)
        if config is not None and not self.continuing:  # a continued run keeps its first config
            self._write_config(config)
        self._open_logs(tensorboard)

    def _claim(self, overwrite: bool) -> None:
        """The folder, for this process alone: locked from before the first look at what it
        holds, then a run it holds refused or (overwrite) cleared. Refused, it is left as found."""
        made = missing_folders(self.dir)
        self._lock = lock_run_dir(self.dir)
        try:
            self._refuse_or_clear(overwrite)
        except GalleryError:
            unlock_run_dir(self._lock)
            self._lock = None
            if made:  # the folders this run made go again, lock file and all
                (self.dir / LOCK).unlink(missing_ok=True)
                remove_empty(made)
            raise
        self.dir.mkdir(parents=True, exist_ok=True)

    def _write_config(self, config: Any) -> None:
        """The resolved config, and the command line's overrides (scripts/sweep_report.py groups a
        sweep's jobs by them)."""
        atomic_write(self.dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(config))
        atomic_write(self.dir / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(task_overrides()))

    def _open_logs(self, tensorboard: bool) -> None:
        """metrics.jsonl (appended to when the run continues), and TensorBoard when asked for and
        installed."""
        mode = "a" if self.continuing else "w"
        self._metrics = open(self.dir / "metrics.jsonl", mode)  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                # optional and heavy: imported when a run asks for it
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("tensorboard is not installed; logging to metrics.jsonl only",
                      file=sys.stderr)
            else:
                self._tb = SummaryWriter(self.dir / "tb")

    def _refuse_or_clear(self, overwrite: bool) -> None:
        """A fresh run into a folder that holds a run: refused, or (overwrite) cleared."""
        held = [name for name in self.RESULTS if (self.dir / name).exists()]
        if held and not self.continuing:
            if not overwrite:
                raise ConfigError(f"out_dir={self.dir} already holds a run ({', '.join(held)}): "
                                  f"continue it with "
                                  "resume=true, pick another out_dir, or replace it with "
                                  "overwrite=true")
            for name in held:
                if (self.dir / name).is_dir():
                    shutil.rmtree(self.dir / name)
                else:
                    (self.dir / name).unlink()

    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoints"

    def path(self, name: str) -> Path:
        return self.dir / name

    def save(self, stateful: dict[str, Any], step: int, **extra: Any) -> None:
        """A checkpoint of the stateful objects (`capture`), the RNGs, the step and any plain
        counters."""
        if self.is_main:
            state = {**capture(stateful), "step": step, "rng": rng_state(), **extra}
            save_checkpoint(self.checkpoint_dir, state)

    def restore(self, stateful: dict[str, Any], map_location: Any) -> dict[str, Any]:
        """Load `last.pt` into the stateful objects and the RNGs, drop the metrics rows logged after
        it, and return the checkpoint (its "step" and counters)."""
        if self.continuing:
            state = load_latest(self.checkpoint_dir, map_location=map_location)
        else:
            state = load_checkpoint(self.resume_from, map_location=map_location)
        restore(stateful, state)
        set_rng_state(state["rng"])
        self.resume_at(state["step"])
        return state

    def resume_at(self, step: int) -> int:
        """Drop the metrics rows logged after `step` (the checkpoint's), so the resumed run's rows
        follow on as if it had never stopped. Returns `step`."""
        if self._metrics is not None:
            self._metrics.close()
            rows = [r for r in read_metrics(self.dir / "metrics.jsonl") if r["step"] <= step]
            atomic_write(self.dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
            self._metrics = open(self.dir / "metrics.jsonl", "a")  # noqa: SIM115 - close() does
        return step

    def finished_summary(self, step: int, steps: int) -> dict | None:
        """The run's summary, unchanged, when a resumed run has nothing left to do; else None."""
        if step < steps or not (self.dir / "summary.json").is_file():
            return None
        print(f"the run in {self.dir} is finished ({step} of steps={steps}); nothing to do "
              f"(to train further: resume=true steps=<more than {step}>)", file=sys.stderr)
        return json.loads((self.dir / "summary.json").read_text())

    def stop_if_asked(self, save: Callable[[], None] | None, step: int, steps: int) -> None:
        """After a step: on SIGINT/SIGTERM, save a checkpoint (when the example can resume) and
        stop. After the last step the run just finishes: its summary is moments away."""
        if self.stop_signal is None or step >= steps:
            return
        if save is not None and self.is_main:
            save()
        raise Interrupted(self.stop_signal, step, self.dir, resumable=save is not None)

    def check_finite(self, step: int, **values: float) -> None:
        """Stop a run whose loss became NaN or infinite (checked on log steps: no extra sync per
        step)."""
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            values = ", ".join(f"{k}={v}" for k, v in bad.items())
            saved = (f"the last good checkpoint is in {self.checkpoint_dir}"
                     if (self.checkpoint_dir / LAST).is_file() else "no checkpoint was saved yet")
            raise Diverged(f"diverged at step {step}: {values}; {saved}")

    def log(self, step: int, **metrics: Any) -> None:
        if self._metrics is None:
            return
        row = _json_safe({"step": step, **metrics})
        try:
            self._metrics.write(json.dumps(row) + "\n")
            self._metrics.flush()
        except OSError as err:  # a full disk, say: a row cut short is dropped on resume
            raise RunFault(f"could not write {self.dir / 'metrics.jsonl'} at step {step} "
                           f"({err.strerror or err})") from err
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)

    def append_text(self, name: str, text: str) -> None:
        """Append to a text file in the run dir (rank 0 only)."""
        if self.is_main:
            with open(self.path(name), "a") as f:
                f.write(text)

    def write_summary(self, summary: dict) -> dict:
        summary = _json_safe({"status": "finished", **summary, "out_dir": str(self.dir),
                              "threads": torch.get_num_threads(),
                              "wall_seconds": round(time.perf_counter() - self.started, 3)})
        if self.is_main:
            try:
                atomic_write(self.dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            except OSError as err:
                raise RunFault(f"could not write {self.dir / 'summary.json'} "
                               f"({err.strerror or err})") from err
        return summary

    def close(self) -> None:
        unlock_run_dir(self._lock)
        self._lock = None
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # the second signal: out at once; the last checkpoint is complete
        if self.stop_signal is not None:
            os._exit(128 + signum)
        self.stop_signal = signum
        # at a terminal, off the line the bar and the echoed ^C hold; in a log, no blank line
        start = "\n" if sys.stderr.isatty() else ""
        print(f"{start}{signal.Signals(signum).name}: stopping after this step (send it again to "
              f"stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> Run:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._handlers[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers.clear()
        self.close()
        metrics = self.dir / "metrics.jsonl"
        untouched = self.is_main and not self.continuing and metrics.exists() \
            and not metrics.stat().st_size
        bad_input = isinstance(exc, GalleryError) \
            and not isinstance(exc, (Diverged, ExplainedMistake, RunFault))
        if bad_input and untouched:
            # Bad input found once the run had started (a foreign checkpoint, say): leave nothing
            # behind.
            for name in ("metrics.jsonl", ".hydra/config.yaml", ".hydra/overrides.yaml", LOCK):
                (self.dir / name).unlink(missing_ok=True)
            for folder in (self.dir / ".hydra", self.dir):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        if isinstance(exc, Diverged) and self.is_main:
            self.write_summary({"status": "diverged", "error": str(exc)})
        if isinstance(exc, ExplainedMistake) and self.is_main:
            self.write_summary({"status": "raised",
                                "mistake": getattr(self.config, "mistake", None),
                                "seed": getattr(self.config, "seed", None), "error": str(exc),
                                "cause": str(exc.__cause__).splitlines()[0] if exc.__cause__
                                else None})


def read_metrics(path: Path | str) -> list[dict]:
    """The rows of a metrics.jsonl. A last line cut short (a full disk or a kill mid-write) was
    never a whole row and is left out; a bad line anywhere else is an error."""
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1 or line.endswith("\n"):
                raise
    return rows


def progress(total: int, desc: str, enabled: bool | None = None, initial: int = 0) -> tqdm:
    """A tqdm bar that is off when stderr is not a terminal (CI logs, pytest), unless forced."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, initial=initial, disable=not enabled or dist.rank() != 0,
                dynamic_ncols=True, leave=False)
