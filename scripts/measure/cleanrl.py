"""`scripts/bench.py cleanrl`: the gallery against CleanRL's own scripts, whole processes at
CleanRL's settings, in turn."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gallery.core.config import to_schema
from scripts.measure.dqn import CLEANRL_LIKE, gallery_dqn_loop, minimal_dqn_loop
from scripts.measure.minimal_loops import minimal_ppo_loop
from scripts.measure.timing import ROOT, config, process_seconds

# CleanRL ppo.py's CartPole hyperparameters, in this gallery's keys.
CLEANRL_PPO = ["env.num_envs=4", "rollout_steps=128", "epochs=4", "minibatch_size=128", "lr=2.5e-4",
               "gamma=0.99", "gae_lambda=0.95", "ent_coef=0.01", "hidden=64"]


CLEANRL_RUNS = {  # CleanRL's script and its flags; the gallery module and its overrides
    "dqn": (["cleanrl/dqn.py", "--total-timesteps", "50000"],
            [*CLEANRL_LIKE, "steps=50000", "eval_every=50000"]),
    "ppo": (["cleanrl/ppo.py", "--total-timesteps", "100000"],
            [*CLEANRL_PPO, "steps=100000", "eval_every=100000"]),
}


CLEANRL_DEPS = ["gymnasium==0.29.1", "tyro", "tensorboard"]  # what its two scripts import


def cleanrl_python_path(clone: Path) -> str:
    """PYTHONPATH for CleanRL's scripts: its own dependencies, installed once with pip --target
    into the gallery's cache (its gymnasium is older than the gallery's), then the clone."""
    import shutil

    from gallery.core.config import cache_root

    deps = cache_root() / "cleanrl-deps"
    if not (deps / ".installed").is_file():
        print(f"installing {' '.join(CLEANRL_DEPS)} into {deps} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(deps),
                        "--disable-pip-version-check", "--no-warn-conflicts", *CLEANRL_DEPS],
                       check=True)  # no warning that the venv's gymnasium is newer: it is meant
        for shared in ("torch", "numpy"):  # the project's own, so both sides run the same build
            for path in deps.glob(f"{shared}*"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        (deps / ".installed").write_text("")
    return f"{deps}:{clone}"


def bench_cleanrl(device: torch.device, clone: str | None = None, pairs: int = 3) -> list[dict]:
    """CleanRL's own dqn.py and ppo.py, from a local clone of its public repository (--cleanrl
    PATH), against gallery.dqn and gallery.ppo at CleanRL's settings, as whole processes from start
    to exit, in alternating pairs (median of `pairs`). And each gallery train() call against a
    minimal loop of the same pattern functions with nothing around them."""
    import shutil

    from gallery import dqn, ppo  # noqa: F401 - importing registers their schemas for config()

    if device.type != "cpu":
        return [{"skipped": "whole-process comparisons run on the CPU"}]
    rows = []
    if clone is None or not (Path(clone) / "cleanrl" / "dqn.py").is_file():
        rows.append({"skipped": "no CleanRL clone: scripts/bench.py cleanrl --cleanrl PATH, a "
                                "clone of github.com/vwxyzjn/cleanrl"})
    else:
        clone = Path(clone).resolve()
        path = cleanrl_python_path(clone)
        for name, (script, overrides) in CLEANRL_RUNS.items():
            times: dict[str, list[float]] = {"cleanrl": [], "gallery": []}
            with tempfile.TemporaryDirectory() as tmp:
                for i in range(pairs):
                    times["cleanrl"].append(process_seconds(
                        [sys.executable, str(clone / script[0]), *script[1:], "--no-cuda"],
                        cwd=Path(tmp), env={"PYTHONPATH": path}))
                    times["gallery"].append(process_seconds(
                        [sys.executable, "-m", f"gallery.{name}", *overrides, "device=cpu",
                         "stop_when_solved=false", "eval_episodes=1", "progress=false",
                         f"out_dir={tmp}/gallery{i}"], cwd=ROOT))
                    shutil.rmtree(Path(tmp) / "runs", ignore_errors=True)
            ratios = [c / g for c, g in zip(times["cleanrl"], times["gallery"])]
            rows.append({"setting": f"{name}: CleanRL's {script[0]} {' '.join(script[1:])} against "
                                    f"gallery.{name} at its settings, whole processes, {pairs} "
                                    "pairs in turn",
                         "cleanrl_seconds": statistics.median(times["cleanrl"]),
                         "gallery_seconds": statistics.median(times["gallery"]),
                         "speed_ratio_per_pair": ratios,
                         "gallery_speed_over_cleanrl": statistics.median(ratios)})
    torch.set_num_threads(1)  # as threads=auto gives these small nets
    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())  # the first optimizer imports dynamo
    # the first figure imports matplotlib: neither that nor dynamo is the loop's cost
    import matplotlib.pyplot  # noqa: F401
    dqn_cfg = to_schema(config("dqn", f"device={device}", *CLEANRL_LIKE, "steps=50000"))
    ppo_cfg = to_schema(config("ppo", f"device={device}", *CLEANRL_PPO, "steps=100000"))

    def ppo_train() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            summary = ppo.train(config(
                "ppo", f"device={device}", *CLEANRL_PPO, "steps=100000", "stop_when_solved=false",
                "eval_every=100000", "eval_episodes=1", "value_check_episodes=0", "progress=false",
                f"out_dir={tmp}/ppo"))  # the value check after training is not the loop's work
            return summary["env_steps"] / (time.perf_counter() - start)

    # in turn, `pairs` times, medians: this machine's speed drifts by more than the gap measured
    runs: dict[str, list[float]] = {"dqn_minimal": [], "dqn_gallery": [], "ppo_minimal": [],
                                    "ppo_gallery": []}
    for _ in range(pairs):
        runs["dqn_minimal"].append(minimal_dqn_loop(dqn_cfg, device))
        runs["dqn_gallery"].append(gallery_dqn_loop([*CLEANRL_LIKE, "steps=50000"], device)[0])
        runs["ppo_minimal"].append(minimal_ppo_loop(ppo_cfg, device))
        runs["ppo_gallery"].append(ppo_train())
    median = {name: statistics.median(values) for name, values in runs.items()}
    rows.append({"setting": "train() calls against minimal loops, CleanRL's settings (env steps/s, "
                            f"median of {pairs} runs in turn)", **median,
                 "dqn_fraction_of_minimal": median["dqn_gallery"] / median["dqn_minimal"],
                 "ppo_fraction_of_minimal": median["ppo_gallery"] / median["ppo_minimal"]})
    return rows
