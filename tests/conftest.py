from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]

# tests/recipe holds the "Add an example" page's example, which tests/test_recipe.py drops into a
# scratch checkout: its files are not tests of this one
collect_ignore = ["recipe"]


@pytest.fixture(autouse=True)
def _clean_hydra():
    """Each test composes from a clean slate, as lightning-hydra-template does."""
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


@dataclass
class Ran:
    """What `run_here` gives back: the fields of a finished subprocess.CompletedProcess that tests
    read."""
    returncode: int
    stdout: str
    stderr: str


def run_here(module: str, *args: str) -> Ran:
    """`python -m <module> *args` inside this process: the same entry point, command line, exit
    status and output as a real process, without its ~4 s start-up. Tests start a real process only
    where the process is the point (a signal, torchrun, an installed wheel, Hydra's own argv
    handling in one case of each)."""
    import contextlib
    import gc
    import importlib
    import io

    from gallery.core import seeding
    from gallery.core.cli import command_line

    target = importlib.import_module("gallery.__main__" if module == "gallery" else module)
    out, err, code = io.StringIO(), io.StringIO(), 0
    argv, deterministic = sys.argv, torch.are_deterministic_algorithms_enabled()
    sys.argv = [str(target.__file__), *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if module == "gallery":
                code = target.main(list(args))
            else:
                command_line(target.EXAMPLE, target.train, list(args))
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if isinstance(stop.code, str):
            err.write(stop.code + "\n")
    finally:
        sys.argv = argv
        gc.unfreeze()  # run_cli freezes what is alive, for a process that ends with the run
        torch.use_deterministic_algorithms(deterministic)
        # the deterministic=true notice is once per process: this "process" is over
        seeding._told.clear()
    return Ran(code, out.getvalue(), err.getvalue())


def run_module(module: str, *args: str, timeout: int = 300, cwd: Path = ROOT,
               env: dict | None = None,
               python: str = sys.executable) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([python, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def pytest_addoption(parser):
    parser.addoption("--require-gpu", action="store_true",
                     help="a missing CUDA device is an error, not a reason to skip "
                          "(GALLERY_GPU_ONLY=1 implies it)")
    parser.addoption("--fuzz-examples", type=int, default=60,
                     help="cases per example in tests/test_fuzz.py (derandomized: the same cases "
                          "every run)")
    parser.addoption("--fuzz-long", action="store_const", const=2000, dest="fuzz_examples",
                     help="the long fuzz profile: 2,000 cases per example")


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skip with a reason on a CPU machine. On a GPU runner, GALLERY_GPU_ONLY=1 keeps
    only the `gpu` tests and makes a missing GPU an error, so a GPU job cannot pass with everything
    skipped."""
    gpu_only = os.environ.get("GALLERY_GPU_ONLY") == "1"
    if (gpu_only or config.getoption("--require-gpu")) and not torch.cuda.is_available():
        raise pytest.UsageError("a GPU was required (GALLERY_GPU_ONLY=1 or --require-gpu), but "
                                "CUDA is not available on this machine")
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


@pytest.fixture(scope="session", autouse=True)
def _own_cache(tmp_path_factory):
    """Downloads and pretrained backbones go to a folder of this session, never the user's
    ~/.cache."""
    from gallery.core.config import cache_root

    os.environ.setdefault("GALLERY_PEERS", str(cache_root()))  # peers stay where they were put
    cache = tmp_path_factory.mktemp("gallery_cache")
    saved = os.environ.get("GALLERY_CACHE")
    os.environ["GALLERY_CACHE"] = str(cache)
    yield cache
    if saved is None:
        os.environ.pop("GALLERY_CACHE", None)
    else:
        os.environ["GALLERY_CACHE"] = saved


@pytest.fixture(scope="session")
def pretrained_backbone(tmp_path_factory):
    """One small digits backbone (30 pretraining steps on classes 0-4), built once through
    stage=pretrain and shared by every finetune run in the session: pass
    backbone.checkpoint_dir=<it>."""
    from gallery import finetune
    from gallery.core.cli import compose

    GlobalHydra.instance().clear()
    folder = tmp_path_factory.mktemp("backbone")
    overrides = ["stage=pretrain", f"backbone.checkpoint_dir={folder}",
                 "backbone.pretrain_steps=30", "device=cpu"]
    summary = finetune.train(compose("finetune", overrides))
    assert summary["stage"] == "pretrain" and (folder / "last.pt").is_file()
    return folder


def smoke_args(example, tmp_path, backbone) -> list[str]:
    """An example's smoke overrides in `tmp_path`; finetune's read the session's pretrained
    backbone (`pretrained_backbone`) instead of pretraining one of their own."""
    args = example.smoke_overrides(tmp_path)
    if example.name == "finetune":
        args = [a for a in args if not a.startswith("backbone.checkpoint_dir=")]
        args.append(f"backbone.checkpoint_dir={backbone}")
    return args


# --- for each example's check_step (tests/test_<example>.py), the check table's runners ---

@contextlib.contextmanager
def arguments_of(module, name: str):
    """Inside the block, every call of `module.name` also records its positional arguments."""
    real, calls = getattr(module, name), []

    def record(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    setattr(module, name, record)
    try:
        yield calls
    finally:
        setattr(module, name, real)

@contextlib.contextmanager
def results_of(namespace, name: str):
    """Inside the block, every call of `namespace.name` also records what it returned."""
    real, results = getattr(namespace, name), []

    def record(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    setattr(namespace, name, record)
    try:
        yield results
    finally:
        setattr(namespace, name, real)

class StubEnvs:
    """Two CartPole-shaped sub-envs that never end: enough for a rollout's graph."""

    def step(self, actions):
        n = len(actions)
        return (np.random.randn(n, 4).astype(np.float32), np.ones(n, np.float32),
                np.zeros(n, bool), np.zeros(n, bool), {})


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """The documentation site, built once with `mkdocs build --strict` (a warning fails it too):
    tests/test_docs.py and tests/test_browser.py read it, in one process (xdist group "site")."""
    import re

    out = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).parent / "mkdocs"
    assert mkdocs.is_file(), ("mkdocs comes with the docs extra: pip install -e '.[docs]' "
                              "(scripts/test.sh does)")
    proc = subprocess.run([str(mkdocs), "build", "--strict", "-d", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DISABLE_MKDOCS_2_WARNING": "true",
                               "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not re.search(r"^WARNING", proc.stderr, flags=re.M), proc.stderr[-3000:]
    return out
