"""Atomic checkpoints that keep the last and the previous, loaded with `weights_only=True`.

A checkpoint is a dict of tensors, state dicts and plain Python values. Anything else (a pickled
class, a lambda) is refused on load, so a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from gallery.core.errors import CheckpointError

FORMAT = "detach-gallery/1"
LAST, PREVIOUS = "last.pt", "previous.pt"


def save_checkpoint(directory: Path | str, state: dict[str, Any]) -> Path:
    """Write `last.pt` atomically; the old `last.pt` becomes `previous.pt`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ckpt.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        last = directory / LAST
        if last.exists():
            os.replace(last, directory / PREVIOUS)
        os.replace(tmp, last)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return last


def load_checkpoint(path: Path | str, map_location: Any = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds an object that is not plain data "
            f"(tensors, numbers, strings, lists, dicts), and it is loaded with weights_only=True. "
            f"Detail: {str(err).splitlines()[0]}"
        ) from err
    except Exception as err:  # torch raises many types for a damaged zip or a non-torch file
        raise CheckpointError(
            f"checkpoint {path} is truncated or is not a checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); "
            f"try {path.parent / PREVIOUS} or start without resume"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a detach-gallery checkpoint")
    return state
