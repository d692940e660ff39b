"""Seed every RNG we use, and capture/restore them as plain data a weights_only checkpoint
accepts."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch

_told: list[bool] = []


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this set before its first call to be reproducible.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # an op without a deterministic kernel raises, naming itself
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        if not _told:
            _told.append(True)
            print("deterministic=true: deterministic kernels only and no cuDNN autotuning; on CUDA "
                  "that is often slower (and an op without a deterministic kernel raises), on CPU "
                  "it changes little", file=sys.stderr)


def rng_state() -> dict:
    """Python, NumPy and torch RNG states as tensors and ints only (no pickled objects)."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
         npst["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
