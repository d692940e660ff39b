from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_hydra():
    """Each test composes from a clean slate, as lightning-hydra-template does."""
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def run_module(module: str, *args: str, timeout: int = 300, cwd: Path = ROOT, env: dict | None = None,
               python: str = sys.executable) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([python, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env)


def pytest_addoption(parser):
    parser.addoption("--require-gpu", action="store_true",
                     help="a missing CUDA device is an error, not a reason to skip (GALLERY_GPU_ONLY=1 implies it)")


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skip with a reason on a CPU machine. On a GPU runner, GALLERY_GPU_ONLY=1 keeps only
    the `gpu` tests and makes a missing GPU an error, so a GPU job cannot pass with everything skipped."""
    gpu_only = os.environ.get("GALLERY_GPU_ONLY") == "1"
    if (gpu_only or config.getoption("--require-gpu")) and not torch.cuda.is_available():
        raise pytest.UsageError("a GPU was required (GALLERY_GPU_ONLY=1 or --require-gpu), but CUDA is not "
                                "available on this machine")
    if gpu_only:
        deselected = [item for item in items if item.get_closest_marker("gpu") is None]
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item.get_closest_marker("gpu") is not None]
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; this machine has none")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
