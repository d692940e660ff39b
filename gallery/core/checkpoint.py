"""Atomic checkpoints that keep the last and the previous, loaded with `weights_only=True`.

A checkpoint is a dict of tensors, state dicts and plain Python values. Anything else (a pickled
class, a lambda) is refused on load, so a checkpoint from elsewhere cannot run code.

Each example lists its stateful pieces once, as a dict of objects (anything with `state_dict` /
`load_state_dict`, or a `torch.Generator`); `capture` and `restore` both read that one dict.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from gallery.core.errors import CheckpointError, CheckpointWriteError, ConfigError
from gallery.core.io import atomic_write, torch_bytes

FORMAT = "detach-gallery/1"
LAST, PREVIOUS = "last.pt", "previous.pt"


def capture(objects: dict[str, Any]) -> dict[str, Any]:
    """The state of every object in `objects`, as plain data a weights_only load accepts."""
    return {name: obj.get_state() if isinstance(obj, torch.Generator) else obj.state_dict()
            for name, obj in objects.items()}


# what a resume may change, recorded in its summary: keys that extend the run (steps) or only
# observe it, or say where things are; every other key changes what the run is, and a resume that
# asks for another value of one is refused (docs/faults.md)
MAY_CHANGE_ON_RESUME = {"steps", "out_dir", "resume", "overwrite", "device", "threads",
                        "progress", "tensorboard", "log_every", "eval_every", "ckpt_every",
                        "stop_when_solved", "deterministic", "pretrain_dir", "checkpoint_dir",
                        "teacher_dir", "data.root", "data.path", "backbone.checkpoint_dir"}
# none of these sets a tensor's shape: a checkpoint that does not fit names the other keys
RUN_KEYS = MAY_CHANGE_ON_RESUME | {"seed", "mistake"}


def resume_changes(state: dict[str, Any], config: Any, path: Path | str,
                   steps: int) -> dict[str, list[Any]]:
    """What this resume changes of the run whose checkpoint `state` is: {key: [there, here]} for
    the keys that may change. Refuses, in one line naming each key and both values, a change to a
    key that changes what the run is (the mistake, the model's shape, the data, the optimizer's
    settings), and a checkpoint already at or past `steps`, which leaves nothing to train."""
    saved, now = state.get("config", {}), settings(config)
    differ = {k: [saved[k], now[k]] for k in sorted(saved) if k in now and saved[k] != now[k]}
    fixed = [f"{k}={there} there, {here} here" for k, (there, here) in differ.items()
             if k not in MAY_CHANGE_ON_RESUME]
    if fixed:
        raise ConfigError(f"resume: {path} is of a run made with other settings "
                          f"({'; '.join(fixed)}): a resume goes on with the run's own; leave them "
                          f"out, or start a new run in another out_dir")
    step = state["step"]
    if step >= steps:
        raise ConfigError(f"resume: {path} is at step {step:,}, and steps={steps:,} leaves "
                          f"nothing to train; ask for steps greater than {step:,} to go on")
    return {k: v for k, v in differ.items() if k not in ("resume", "overwrite", "out_dir")}


def settings(config: Any) -> dict[str, Any]:
    """A config's plain values, flattened to "group.key": what a checkpoint keeps of the run that
    wrote it, to name the keys that differ when it does not fit."""
    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value,
                                                                       f"{prefix}{key}.").items()}
        return {prefix[:-1]: node} if isinstance(node, (int, float, str, bool)) else {}

    node = config if OmegaConf.is_config(config) else OmegaConf.structured(config)
    return flat(OmegaConf.to_container(node, resolve=False))


def check_fits(objects: dict[str, Any], state: dict[str, Any], path: Path | str, example: str,
               config: Any) -> None:
    """Refuse, in one line, a checkpoint another example wrote, or one whose tensors do not fit
    these objects (another `hidden`, another model): naming both examples, or the keys whose
    values differ between the run that wrote it and this one. Loads it into `objects` when it
    fits (the caller loads it again, after claiming the run's folder)."""
    written_by = state.get("example")
    if written_by not in (None, example):
        raise CheckpointError(f"{path} was written by {written_by}, not {example}: resume "
                              f"{example} from one of its own checkpoints")
    try:
        restore(objects, state)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        if isinstance(err, CheckpointError) and written_by is None:
            raise
        saved, now = state.get("config", {}), settings(config)
        differ = [f"{k}={saved[k]} there, {now[k]} here" for k in sorted(saved)
                  if k in now and saved[k] != now[k] and k not in RUN_KEYS]
        what = "; ".join(differ) if differ else "its tensors have other shapes than this run's"
        raise CheckpointError(f"{path} does not fit this {example} run: {what}") from None


def restore(objects: dict[str, Any], state: dict[str, Any]) -> None:
    """Load what `capture` saved back into the same objects."""
    for name, obj in objects.items():
        if name not in state:
            raise CheckpointError(f"the checkpoint has no {name!r}: it was written by another "
                                  f"example or version")
        if isinstance(obj, torch.Generator):
            obj.set_state(state[name])
        else:
            obj.load_state_dict(state[name])


def save_checkpoint(directory: Path | str, state: dict[str, Any]) -> Path:
    """Write `last.pt` atomically; the old `last.pt` becomes `previous.pt`. A failed write (a full
    disk, say) leaves both as they were and says so."""
    directory = Path(directory)
    last = directory / LAST

    def keep_previous() -> None:
        if last.exists():
            os.replace(last, directory / PREVIOUS)

    try:
        return atomic_write(last, torch_bytes({"format": FORMAT, **state}),
                            before_replace=keep_previous)
    except OSError as err:
        kept = f"{last} is as it was" if last.exists() else "no checkpoint was written before"
        why = err.strerror or err
        message = f"could not write a checkpoint to {directory} ({why}); {kept}"
        raise CheckpointWriteError(message) from err


def load_checkpoint(path: Path | str, map_location: Any = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    # torch.save writes a zip archive; anything else is damaged or foreign
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is truncated or not a checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        unsupported = [line.strip() for line in str(err).splitlines()
                       if "Unsupported global" in line]
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds an object that is not plain data (tensors, "
            f"numbers, strings, lists, dicts), so it could run code when loaded"
            + (f" ({unsupported[0]})" if unsupported else "")
        ) from err
    except Exception as err:  # torch raises many types for a damaged zip
        raise CheckpointError(f"checkpoint {path} is truncated or not a checkpoint "
                              f"({type(err).__name__})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a detach-gallery checkpoint")
    return state


def load_latest(directory: Path | str, map_location: Any = "cpu") -> dict[str, Any]:
    """`last.pt`, or `previous.pt` with a warning naming both when `last.pt` is damaged."""
    directory = Path(directory)
    try:
        return load_checkpoint(directory / LAST, map_location)
    except CheckpointError as err:
        if not (directory / PREVIOUS).is_file():
            raise
        print(f"warning: {err}; resuming from {directory / PREVIOUS} instead", file=sys.stderr)
        try:
            return load_checkpoint(directory / PREVIOUS, map_location)
        except CheckpointError as older:
            raise CheckpointError(f"neither checkpoint can be used: {err}; and {older}") from older


def cache_folder(root: Path | str, seed: int, shape: tuple) -> Path:
    """Where a model pretrained at this seed and shape is cached: root/seed<seed>-<shape hash>."""
    return Path(root) / f"seed{seed}-{hashlib.sha256(repr(shape).encode()).hexdigest()[:12]}"


def trained_once(folder: Path | str, modules: dict[str, Any], train: Callable[[], dict],
                 map_location: Any = "cpu") -> dict[str, Any]:
    """Pretraining, once: `modules` read from folder/last.pt where an earlier run saved them;
    otherwise `train()` trains them in place, and their state is saved there with the plain
    values it returns (the last loss, the steps). Returns what the checkpoint holds. One helper
    for every cached start: the character model (gallery/lm.py) and distill's teacher."""
    path = Path(folder) / LAST
    if path.is_file():
        state = load_checkpoint(path, map_location)
        for name, module in modules.items():
            module.load_state_dict(state[name])
        return state
    record = train()
    state = {**{name: module.state_dict() for name, module in modules.items()}, **record}
    save_checkpoint(folder, state)
    return state
