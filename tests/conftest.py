from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(autouse=True)
def _clean_hydra():
    """Each test composes from a clean slate, as lightning-hydra-template does."""
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def compose_config(name: str, overrides: list[str] | None = None, config_dir: Path = CONFIGS):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
        return compose(config_name=name, overrides=overrides or [])


def run_module(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
    )


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; this machine has none")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
