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


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; this machine has none")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
