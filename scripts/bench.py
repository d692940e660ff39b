#!/usr/bin/env bash
# Runs on the project's venv, made on first use: bash runs the next line; to Python it is a string.
''''. "$(dirname -- "$0")/_bootstrap.sh"; exec "$VENV/bin/python" "$0" "$@" # '''

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

USAGE = """Speed and memory of each pattern against its mistake, as ratios measured side by side.

    scripts/bench.py [gan|dqn|dqn_envs|finetune|ppo|sac|tbptt|threads|smoke|compile|startup|
                      cleanrl|cuda_graphs|vqvae|chain|sb3|check|all] [--device cpu|cuda]
                     [--json results.json] [--cleanrl CLONE]

Times come from alternating blocks of the two variants in one process (median of the blocks), so a
ratio holds on the machine it ran on even when the absolute times drift. Bytes come from the
saved-tensor probe and are exact. It runs on the project's venv (scripts/bench.py makes it on
first use).
"""

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gallery.core.cli import compose  # noqa: E402
from gallery.core.config import to_schema  # noqa: E402

# before any gallery run sets threads=auto in this process
DEFAULT_THREADS = torch.get_num_threads()
from gallery.core.device import resolve_device  # noqa: E402
from gallery.core.probes import SavedTensorMeter  # noqa: E402
from scripts.measure.check import bench_check  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(variants: dict, rounds: int, per_round: int, device: torch.device,
              warmup: int = 3) -> dict:
    """Median seconds per call of each variant, timed in alternating blocks."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(per_round):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) / per_round)
    return {name: statistics.median(ts) for name, ts in times.items()}


def process_seconds(argv: list[str], cwd: Path, env: dict | None = None) -> float:
    """Seconds of one whole process from start to exit; `env` adds to this process's
    environment."""
    return process_run(argv, cwd, env)[0]


def process_run(argv: list[str], cwd: Path, env: dict | None = None) -> tuple[float, str]:
    """Seconds of one whole process from start to exit, and what it printed."""
    import os
    import subprocess

    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    return time.perf_counter() - start, done.stdout


def config(name: str, *overrides: str):
    return compose(name, overrides)


# --- gan -----------------------------------------------------------------------------------------

def bench_gan(device: torch.device) -> list[dict]:
    from gallery import gan

    rows = []
    for data in ("ring8", "digits"):
        cfg = to_schema(config("gan", f"data={data}", f"device={device}"))
        data_src = gan.build_data(cfg, device)
        states = {}
        for mistake in ("none", "retain_graph"):
            torch.manual_seed(0)
            g, d = gan.build_models(cfg, data_src, device)
            opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
            opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
            states[mistake] = (g, d, opt_g, opt_d)

        def iteration(mistake, states=states, data_src=data_src, cfg=cfg):
            g, d, opt_g, opt_d = states[mistake]

            def run():
                real = data_src.sample(cfg.batch_size)
                fake = g(torch.randn(len(real), cfg.z_dim, device=device))
                gan.BY_MISTAKE[mistake](d, opt_d, opt_g, real, fake, cfg.r1_gamma)

            return run

        secs = alternate({m: iteration(m) for m in states}, rounds=7, per_round=40, device=device)
        with tempfile.TemporaryDirectory() as tmp:
            short = {m: gan.train(config("gan", f"data={data}", f"device={device}", f"mistake={m}",
                                         "steps=2", "log_every=1", "eval_every=2",
                                         "eval_samples=64", f"out_dir={tmp}/{m}"))
                     for m in states}
        rows.append({
            "data": data,
            "pattern_ms_per_iter": secs["none"] * 1e3,
            "retain_graph_ms_per_iter": secs["retain_graph"] * 1e3,
            "time_ratio_retain_graph_over_pattern": secs["retain_graph"] / secs["none"],
            "pattern_d_step_saved_bytes": short["none"]["d_step_saved_bytes"],
            "retain_graph_d_step_saved_bytes": short["retain_graph"]["d_step_saved_bytes"],
            "pattern_iter_peak_saved_bytes": short["none"]["iter_peak_saved_bytes"],
            "retain_graph_iter_peak_saved_bytes": short["retain_graph"]["iter_peak_saved_bytes"],
        })
    return rows


# --- dqn -----------------------------------------------------------------------------------------

# CleanRL dqn.py's CartPole hyperparameters, in this gallery's keys (no Double DQN, a 120-wide MLP).
CLEANRL_LIKE = ["env.num_envs=1", "updates_per_step=0.1", "batch_size=128", "target_sync_every=500",
                "learning_starts=10000", "buffer_size=10000", "eps_end=0.05",
                "eps_decay_steps=25000", "lr=2.5e-4", "hidden=120", "double_dqn=false"]


def minimal_dqn_loop(cfg, device: torch.device) -> float:
    """The limit to hold the training loop against: the same vector env and net, one greedy forward
    per env step, the same updates at the same times, and nothing else. Returns env steps/s."""
    import gymnasium as gym
    import numpy as np

    from gallery import dqn

    n, cap = cfg.env.num_envs, cfg.buffer_size
    envs = gym.make_vec(cfg.env.id, num_envs=n, vectorization_mode=cfg.env.vectorization,
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    obs_dim, n_actions = envs.single_observation_space.shape[0], int(envs.single_action_space.n)
    online = dqn.q_network(obs_dim, n_actions, cfg.hidden).to(device)
    target = dqn.make_target(online)
    optimizer = torch.optim.Adam(online.parameters(), lr=cfg.lr, fused=True)  # as train()
    store = {"obs": np.zeros((cap, obs_dim), np.float32),
             "next_obs": np.zeros((cap, obs_dim), np.float32), "actions": np.zeros(cap, np.int64),
             "rewards": np.zeros(cap, np.float32), "terminated": np.zeros(cap, np.float32)}
    rng = np.random.default_rng(0)
    obs, _ = envs.reset(seed=0)
    steps, credit, size = 0, 0.0, 0
    t0 = time.perf_counter()
    while steps < cfg.steps:
        with torch.no_grad():
            actions = online(torch.from_numpy(obs).to(device)).argmax(1).cpu().numpy()
        next_obs, rewards, terminated, _, _ = envs.step(actions)
        at = np.arange(steps, steps + n) % cap
        for key, value in zip(store, (obs, next_obs, actions, rewards, terminated)):
            store[key][at] = value
        obs, steps, size = next_obs, steps + n, min(size + n, cap)
        credit += cfg.updates_per_step * n if steps >= cfg.learning_starts else 0.0
        while credit >= 1:
            idx = rng.integers(size, size=cfg.batch_size)
            batch = {key: torch.from_numpy(value[idx]).to(device) for key, value in store.items()}
            dqn.update(online, target, optimizer, batch, cfg.gamma, cfg.double_dqn,
                       cfg.max_grad_norm)
            credit -= 1
        if steps % cfg.target_sync_every < n:
            dqn.sync_target(target, online)
    sync(device)
    seconds = time.perf_counter() - t0
    envs.close()
    return steps / seconds


def gallery_dqn_loop(overrides: list[str], device: torch.device) -> tuple[float, float]:
    """env steps/s of `gallery.dqn.train`: over its whole call (setup, one greedy eval episode at
    the end, the checkpoint, the figure) and as its own probe reports it (unsampled steps only)."""
    from gallery import dqn

    with tempfile.TemporaryDirectory() as tmp:
        cfg = config("dqn", f"device={device}", *overrides, "stop_when_solved=false",
                     "eval_episodes=1", f"out_dir={tmp}", "progress=false")
        cfg.eval_every = cfg.steps
        t0 = time.perf_counter()
        summary = dqn.train(cfg)
        seconds = time.perf_counter() - t0
    return summary["env_steps"] / seconds, summary["env_steps_per_sec"]


def whole_process_seconds(cwd: Path, overrides: list[str]) -> float:
    """`python -m gallery.dqn` from start to exit, run from `cwd` (a checkout), on one thread."""
    with tempfile.TemporaryDirectory() as tmp:
        return process_seconds([sys.executable, "-m", "gallery.dqn", *overrides, "device=cpu",
                                "threads=auto", "stop_when_solved=false", f"out_dir={tmp}/run",
                                "progress=false"], cwd)


def bench_dqn(device: torch.device, baseline: str | None = None) -> list[dict]:
    import numpy as np

    from gallery import dqn

    torch.set_num_threads(1)  # as threads=auto gives these small nets in gallery.dqn
    # the first optimizer imports torch._dynamo
    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())
    # the first figure imports matplotlib: neither that nor dynamo is the loop's cost
    import matplotlib.pyplot  # noqa: F401

    rows = []
    for setting, overrides in (("default", ["steps=20000"]),
                               ("cleanrl_like", [*CLEANRL_LIKE, "steps=50000"])):
        for num_envs in (1, 4):
            run = [*overrides, f"env.num_envs={num_envs}"]
            minimal = minimal_dqn_loop(to_schema(config("dqn", f"device={device}", *run)), device)
            whole, probed = gallery_dqn_loop(run, device)
            rows.append({"setting": f"{setting}, env.num_envs={num_envs}",
                         "minimal_loop_env_steps_per_sec": minimal,
                         "gallery_env_steps_per_sec": whole,
                         "fraction_of_minimal": whole / minimal,
                         "gallery_probe_env_steps_per_sec": probed})

    cfg = to_schema(config("dqn", f"device={device}"))
    envs, eval_env = dqn.make_envs(cfg.env, "DQN", 1)
    rng = np.random.default_rng(0)
    envs.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(8000 // cfg.env.num_envs):
        dqn.env_step(envs, rng.integers(2, size=cfg.env.num_envs))
    bare = 8000 / (time.perf_counter() - t0)
    envs.close(), eval_env.close()

    torch.manual_seed(0)
    online = dqn.q_network(4, 2, cfg.hidden).to(device)
    opt = torch.optim.Adam(online.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(0)
    batch = {"obs": torch.randn(cfg.batch_size, 4, generator=g),
             "next_obs": torch.randn(cfg.batch_size, 4, generator=g),
             "actions": torch.randint(2, (cfg.batch_size,), generator=g),
             "rewards": torch.ones(cfg.batch_size), "terminated": torch.zeros(cfg.batch_size)}
    batch = {k: v.to(device) for k, v in batch.items()}
    saved = {}
    for mistake in ("none", "target_grad"):
        make_target, update = dqn.BY_MISTAKE[mistake]
        target = make_target(online)
        with SavedTensorMeter() as meter:
            update(online, target, opt, batch, cfg.gamma, cfg.double_dqn, cfg.max_grad_norm)
        saved[mistake] = meter.total
    rows.append({
        "bare_env_steps_per_sec": bare, "pattern_saved_bytes_per_update": saved["none"],
        "target_grad_saved_bytes_per_update": saved["target_grad"],
        "bytes_ratio_target_grad_over_pattern": saved["target_grad"] / saved["none"],
    })

    # today's code against `baseline`, whole processes, alternating
    if baseline and device.type == "cpu":
        import subprocess

        worktree = Path(tempfile.mkdtemp()) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree),
                        baseline],
                       check=True, capture_output=True)
        try:
            run = [*CLEANRL_LIKE, "steps=50000"]
            times = {"baseline": [], "now": []}
            for _ in range(2):
                times["baseline"].append(whole_process_seconds(worktree, run))
                times["now"].append(whole_process_seconds(ROOT, run))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(worktree)], check=True)
        before, after = statistics.median(times["baseline"]), statistics.median(times["now"])
        rows.append({"setting": "cleanrl_like, env.num_envs=1, 50,000 steps, whole process",
                     "baseline": baseline, "baseline_seconds": before, "now_seconds": after,
                     "now_over_baseline": after / before})
    return rows


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
    import subprocess

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


def minimal_ppo_loop(cfg, device: torch.device) -> float:
    """The limit to hold gallery.ppo's loop against: the same env, net and pattern functions
    (rollout, GAE, update), and nothing else: no evaluation, logging, checkpoint or probe. Env
    steps/s."""
    from gallery import ppo
    from gallery.data.envs import make_envs

    envs, eval_envs = make_envs(cfg.env, "PPO", 1)
    agent = ppo.Agent(4, 2, cfg.hidden).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=1e-5, fused=True)
    obs = torch.as_tensor(envs.reset(seed=0)[0], dtype=torch.float32, device=device)
    per_rollout = cfg.rollout_steps * cfg.env.num_envs
    start = time.perf_counter()
    for _ in range(cfg.steps // per_rollout):
        batch, obs = ppo.rollout(agent, envs, obs, cfg.rollout_steps, cfg.gamma)
        with torch.no_grad():
            next_value = agent.value(obs)
        advantages, returns = ppo.gae(batch, next_value, cfg.gamma, cfg.gae_lambda)
        ppo.ppo_update(agent, optimizer, batch, advantages, returns, cfg.epochs, cfg.minibatch_size,
                       cfg.clip, cfg.vf_coef, cfg.ent_coef, cfg.max_grad_norm)
    seconds = time.perf_counter() - start
    envs.close(), eval_envs.close()
    return cfg.steps // per_rollout * per_rollout / seconds


def minimal_a2c_loop(cfg, device: torch.device) -> float:
    """gallery.a2c's loop with nothing around it: the same env, net and pattern functions (rollout,
    the update with GAE inside it), no evaluation, logging, checkpoint or probe. Env steps/s."""
    from gallery import a2c
    from gallery.data.envs import make_envs, space_sizes

    envs, eval_envs = make_envs(cfg.env, "A2C", 1)
    agent = a2c.Agent(*space_sizes(envs), cfg.hidden).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.lr, fused=True)
    obs = torch.as_tensor(envs.reset(seed=0)[0], dtype=torch.float32, device=device)
    per_rollout = cfg.rollout_steps * cfg.env.num_envs
    start = time.perf_counter()
    for _ in range(cfg.steps // per_rollout):
        batch, obs = a2c.rollout(agent, envs, obs, cfg.rollout_steps, cfg.gamma)
        a2c.a2c_update(agent, optimizer, batch, agent.value(obs), cfg.gamma, cfg.gae_lambda,
                       cfg.vf_coef, cfg.ent_coef, cfg.max_grad_norm)
    seconds = time.perf_counter() - start
    envs.close(), eval_envs.close()
    return cfg.steps // per_rollout * per_rollout / seconds


def minimal_sac_loop(cfg, device: torch.device) -> float:
    """gallery.sac's loop with nothing around it: the same env, nets, buffer and pattern functions
    (random actions until learning_starts, then one critic step, one actor-and-temperature step and
    one Polyak average per env step), no evaluation, logging, checkpoint or probe. Env steps/s."""
    import numpy as np

    from gallery import sac
    from gallery.data.envs import env_step, make_envs, space_sizes
    from gallery.data.replay import ReplayBuffer
    from gallery.nets import sync_target

    envs, eval_envs = make_envs(cfg.env, "SAC", 1, "Box")
    (obs_dim, act_dim), space = space_sizes(envs), envs.single_action_space
    actor = sac.Actor(obs_dim, act_dim, cfg.hidden, space.low, space.high).to(device)
    critics = torch.nn.ModuleList([sac.Critic(obs_dim, act_dim, cfg.hidden)
                                   for _ in range(2)]).to(device)
    targets, temperature = sac.make_targets(critics), sac.Temperature().to(device)
    actor_opt, critic_opt, alpha_opt = sac.make_optimizers(actor, critics, temperature, cfg.lr)
    buffer = ReplayBuffer(cfg.buffer_size, obs_dim, device, act_dim, seed=0)
    rng, obs = np.random.default_rng(0), envs.reset(seed=0)[0]
    start = time.perf_counter()
    for step in range(cfg.steps):
        learning = step >= cfg.learning_starts
        actions = actor.act(obs) if learning else \
            rng.uniform(space.low, space.high, size=(1, act_dim)).astype(np.float32)
        next_obs, real_next, rewards, terminated, _ = env_step(envs, actions)
        buffer.add(obs, actions, rewards, real_next, terminated)
        obs = next_obs
        if learning:
            batch, alpha = buffer.sample(cfg.batch_size), temperature.alpha()
            sac.critic_step(critics, targets, actor, critic_opt, batch, alpha, cfg.gamma)
            sac.actor_alpha_step(actor, critics, temperature, actor_opt, alpha_opt, batch["obs"],
                                 -float(act_dim))
            sync_target(targets, critics, cfg.tau)
    seconds = time.perf_counter() - start
    envs.close(), eval_envs.close()
    return cfg.steps / seconds


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


def bench_dqn_envs(device: torch.device, cap: int = 40_000) -> list[dict]:
    """The default DQN config at env.num_envs 1, 4 and 8, sync and async vector envs (seed 0): the
    env steps to the first greedy eval at CartPole's threshold, and env steps per second over the
    whole train() call (evals included), so a user can pick. One seed: a guide, not a gate."""
    from gallery import dqn

    torch.set_num_threads(1)  # as threads=auto gives these small nets
    rows = []
    for num_envs, mode in ((1, "sync"), (4, "sync"), (8, "sync"), (4, "async"), (8, "async")):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = config("dqn", f"device={device}", f"env.num_envs={num_envs}",
                         f"env.vectorization={mode}", f"steps={cap}", "seed=0", "progress=false",
                         f"out_dir={tmp}/run")
            t0 = time.perf_counter()
            summary = dqn.train(cfg)
            seconds = time.perf_counter() - t0
        rows.append({"setting": f"env.num_envs={num_envs}, env.vectorization={mode}, seed 0",
                     "first_solved_env_steps": summary["first_solved_step"],
                     "env_steps": summary["env_steps"], "seconds": seconds,
                     "env_steps_per_sec": summary["env_steps"] / seconds})
    return rows


# --- finetune ------------------------------------------------------------------------------------

def finetune_step(make_backbone, x, y, mistake: str, unfreeze_last: int, checkpointing: bool,
                  device: torch.device):
    """One fine-tuning training step as a closure, and the bytes its first call saved for
    backward."""
    from gallery import finetune as ft

    torch.manual_seed(0)
    backbone = make_backbone().to(device)
    head = ft.make_head(ft.feature_dim(backbone, x), 5, 128)
    model = ft.BY_MISTAKE[mistake](backbone, head, unfreeze_last).to(device)
    if checkpointing:
        ft.checkpoint_trainable(model)
    opt = torch.optim.AdamW(ft.param_groups(model, 1e-3, 0.3))

    def step():
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with SavedTensorMeter() as meter:
        step()
    return step, meter.total


def bench_finetune(device: torch.device) -> list[dict]:
    from gallery import finetune as ft
    from gallery.nets import digits_cnn, resnet18_backbone

    rows = []
    setups = {
        "digits_cnn 8px, batch 64": (digits_cnn, torch.randn(64, 1, 8, 8), 7, 20),
        "resnet18 224px random weights, batch 8": (
            lambda: resnet18_backbone(ft.BackboneConfig(name="resnet18", weights="random")),
            torch.randn(8, 3, 224, 224), 3, 2),
    }
    for name, (make_backbone, x, rounds, per_round) in setups.items():
        x, y = x.to(device), torch.randint(5, (len(x),), device=device)
        steps, saved = {}, {}
        for mistake in ("none", "no_freeze"):
            steps[mistake], saved[mistake] = finetune_step(
                make_backbone, x, y, mistake, 0, False, device)
        secs = alternate(steps, rounds=rounds, per_round=per_round, device=device, warmup=1)
        rows.append({
            "setup": name, "frozen_ms_per_step": secs["none"] * 1e3,
            "full_ms_per_step": secs["no_freeze"] * 1e3,
            "time_ratio_frozen_over_full": secs["none"] / secs["no_freeze"],
            "frozen_saved_bytes": saved["none"], "full_saved_bytes": saved["no_freeze"],
            "bytes_ratio_frozen_over_full": saved["none"] / saved["no_freeze"],
        })
    return rows + bench_checkpointing(device)


def bench_checkpointing(device: torch.device) -> list[dict]:
    """finetune checkpoint=true: ResNet-18 at 224 px (random weights, batch 8) with its last 2
    blocks and with every block training, each with and without gradient checkpointing of the blocks
    that train."""
    from gallery import finetune as ft
    from gallery.nets import resnet18_backbone

    x = torch.randn(8, 3, 224, 224, device=device)
    y = torch.randint(5, (8,), device=device)
    def make_backbone():
        return resnet18_backbone(ft.BackboneConfig(name="resnet18", weights="random"))

    rows = []
    for label, mistake, unfreeze_last in (("last 2 blocks train", "none", 2),
                                          ("every block trains", "no_freeze", 0)):
        steps, saved = {}, {}
        for checkpointing in (False, True):
            steps[checkpointing], saved[checkpointing] = finetune_step(
                make_backbone, x, y, mistake, unfreeze_last, checkpointing, device)
        secs = alternate(steps, rounds=3, per_round=1, device=device, warmup=1)
        rows.append({
            "setup": f"resnet18 224px random weights, batch 8, {label}: checkpoint=true against "
                     f"false",
            "plain_ms_per_step": secs[False] * 1e3, "checkpointed_ms_per_step": secs[True] * 1e3,
            "time_ratio_checkpointed_over_plain": secs[True] / secs[False],
            "plain_saved_bytes": saved[False], "checkpointed_saved_bytes": saved[True],
            "bytes_ratio_checkpointed_over_plain": saved[True] / saved[False],
        })
    return rows


# --- tbptt ---------------------------------------------------------------------------------------

def bench_tbptt(device: torch.device, chunks: int = 16) -> list[dict]:
    from gallery import tbptt

    cfg = to_schema(config("tbptt", f"device={device}"))
    torch.manual_seed(0)
    vocab = 100
    model = tbptt.CharRNN(vocab, cfg.embed, cfg.hidden, cfg.layers, cfg.cell).to(device)
    data = torch.randint(vocab, (cfg.batch_size, chunks * cfg.bptt_len + 1), device=device)
    x, y = data[:, :-1], data[:, 1:]

    def truncated():
        state = None
        for i in range(chunks):
            sl = slice(i * cfg.bptt_len, (i + 1) * cfg.bptt_len)
            logits, state = model(x[:, sl], tbptt.detach_state(state))
            F.cross_entropy(logits.reshape(-1, vocab), y[:, sl].reshape(-1)).backward()

    def untruncated():
        logits, _ = model(x)
        F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1)).backward()

    peaks = {}
    for name, fn in (("truncated", truncated), ("untruncated", untruncated)):
        with SavedTensorMeter() as meter:
            fn()
        peaks[name] = meter.peak
    secs = alternate({"truncated": truncated, "untruncated": untruncated}, rounds=5, per_round=1,
                     device=device, warmup=1)
    chars = chunks * cfg.bptt_len * cfg.batch_size
    return [{
        "sequence": f"{chunks} chunks x {cfg.bptt_len} chars x {cfg.batch_size} streams",
        "truncated_chars_per_sec": chars / secs["truncated"],
        "untruncated_chars_per_sec": chars / secs["untruncated"],
        "time_ratio_untruncated_over_truncated": secs["untruncated"] / secs["truncated"],
        "truncated_peak_bytes": peaks["truncated"], "untruncated_peak_bytes": peaks["untruncated"],
        "memory_ratio_untruncated_over_truncated": peaks["untruncated"] / peaks["truncated"],
    }]


# --- threads -------------------------------------------------------------------------------------

def bench_ppo(device: torch.device) -> list[dict]:
    """Env steps per second: the bare vector env (random actions), the pattern's rollout alone (one
    no_grad forward per step), and the whole gallery.ppo train() call (rollouts and 20 epochs of
    updates per rollout); and the bytes saved for backward by one rollout and one update, pattern
    against each mistake."""
    import numpy as np

    from gallery import ppo
    from gallery.core.probes import graph_saved_bytes
    from gallery.data.envs import make_envs

    torch.set_num_threads(1)  # as threads=auto gives these small nets in gallery.ppo
    cfg = to_schema(config("ppo", f"device={device}"))
    envs, eval_env = make_envs(cfg.env, "PPO", 1)
    n, steps = cfg.env.num_envs, 20_480
    rng = np.random.default_rng(0)
    envs.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(steps // n):
        envs.step(rng.integers(2, size=n))
    bare = steps / (time.perf_counter() - t0)
    torch.manual_seed(0)
    agent = ppo.Agent(4, 2, cfg.hidden).to(device)
    obs = torch.as_tensor(envs.reset(seed=0)[0], dtype=torch.float32, device=device)
    t0 = time.perf_counter()
    for _ in range(steps // (n * cfg.rollout_steps)):
        batch, obs = ppo.rollout(agent, envs, obs, cfg.rollout_steps, cfg.gamma)
    rollout_only = steps / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        whole = ppo.train(config("ppo", f"device={device}", f"steps={steps}",
                                 "stop_when_solved=false", "eval_every=1000000",
                                 "value_check_episodes=0", "progress=false",
                                 f"out_dir={tmp}/ppo"))["env_steps_per_sec"]
    rows = [{"setting": f"CartPole-v1, env.num_envs={n}, rollout_steps={cfg.rollout_steps}, "
                        f"epochs={cfg.epochs}",
             "bare_env_steps_per_sec": bare, "rollout_only_env_steps_per_sec": rollout_only,
             "rollout_fraction_of_bare": rollout_only / bare,
             "gallery_train_env_steps_per_sec": whole, "train_fraction_of_bare": whole / bare}]
    saved = {}
    for mistake, (rollout_fn, update_fn) in ppo.BY_MISTAKE.items():
        torch.manual_seed(0)
        agent = ppo.Agent(4, 2, cfg.hidden).to(device)
        obs = torch.as_tensor(envs.reset(seed=0)[0], dtype=torch.float32, device=device)
        batch, obs = rollout_fn(agent, envs, obs, cfg.rollout_steps, cfg.gamma)
        held = graph_saved_bytes(batch["logprobs"], batch["values"])
        advantages, returns = ppo.gae(batch, agent.value(obs), cfg.gamma, cfg.gae_lambda)
        optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.lr)
        try:
            with SavedTensorMeter() as meter:
                update_fn(agent, optimizer, batch, advantages, returns, 1, cfg.minibatch_size,
                          cfg.clip)
            per_update: int | str = meter.total
        except RuntimeError as err:
            per_update = f"raises: {str(err).splitlines()[0][:60]}"
        saved[mistake] = {"rollout_holds_bytes": held, "saved_bytes_per_update": per_update}
    envs.close(), eval_env.close()
    rows.append({f"{m}: {k}": v for m, d in saved.items() for k, v in d.items()})
    return rows


def bench_sac(device: torch.device) -> list[dict]:
    """Env steps per second: the bare vector env (random actions) against the whole gallery.sac
    train() call (one update per env step after the random warm-up); and the bytes saved for
    backward by one update (critic step, then actor-and-temperature step), pattern against each
    mistake."""
    import numpy as np

    from gallery import sac
    from gallery.data.envs import make_envs
    from gallery.data.replay import ReplayBuffer

    torch.set_num_threads(1)  # as threads=auto gives these small nets in gallery.sac
    cfg = to_schema(config("sac", f"device={device}"))
    envs, eval_env = make_envs(cfg.env, "SAC", 1, "Box", "Pendulum-v1")
    n, space = cfg.env.num_envs, envs.single_action_space
    obs_dim, act_dim = int(np.prod(envs.single_observation_space.shape)), int(np.prod(space.shape))
    rng, steps = np.random.default_rng(0), 20_000
    obs, _ = envs.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(steps // n):
        envs.step(rng.uniform(space.low, space.high, size=(n, act_dim)).astype(np.float32))
    bare = steps / (time.perf_counter() - t0)
    # random transitions for the byte count
    buffer = ReplayBuffer(cfg.batch_size * 4, obs_dim, device, act_dim)
    for _ in range(buffer.capacity // n):
        actions = rng.uniform(space.low, space.high, size=(n, act_dim)).astype(np.float32)
        next_obs, rewards, terminated, _, _ = envs.step(actions)
        buffer.add(obs, actions, rewards, next_obs, terminated)
        obs = next_obs
    train_steps = 5_000
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        sac.train(config("sac", f"device={device}", f"steps={train_steps}", "eval_every=1000000",
                         "eval_episodes=1", "progress=false", f"out_dir={tmp}/sac"))
        whole = train_steps / (time.perf_counter() - t0)
    rows = [{"setting": f"{cfg.env.id}, env.num_envs={n}, batch_size={cfg.batch_size}, "
                        f"hidden={cfg.hidden}; train() over {train_steps:,} env steps, the first "
                        f"{cfg.learning_starts:,} random, "
                        "then one update per env step",
             "bare_env_steps_per_sec": bare, "gallery_train_env_steps_per_sec": whole,
             "train_fraction_of_bare": whole / bare}]
    saved = {}
    batch = buffer.sample(cfg.batch_size)
    for mistake, (make_targets, make_optimizers, critic_step, actor_step) in sac.BY_MISTAKE.items():
        torch.manual_seed(0)
        actor = sac.Actor(obs_dim, act_dim, cfg.hidden, space.low, space.high).to(device)
        critics = torch.nn.ModuleList([sac.Critic(obs_dim, act_dim,
                                                  cfg.hidden) for _ in range(2)]).to(device)
        temperature = sac.Temperature().to(device)
        targets = make_targets(critics)
        actor_opt, critic_opt, alpha_opt = make_optimizers(actor, critics, temperature, cfg.lr)
        alpha = temperature.log_alpha.exp().detach()
        with SavedTensorMeter() as meter:
            critic_step(critics, targets, actor, critic_opt, batch, alpha, cfg.gamma)
            actor_step(actor, critics, temperature, actor_opt, alpha_opt, batch["obs"],
                       -float(act_dim))
        saved[f"{mistake}: saved_bytes_per_update"] = meter.total
    envs.close(), eval_env.close()
    rows.append({**saved, "target_grad_over_pattern": saved["target_grad: saved_bytes_per_update"]
                 / saved["none: saved_bytes_per_update"]})
    return rows


def bench_threads(device: torch.device, steps: int = 1500) -> list[dict]:
    """The ring8 GAN (3x128 MLPs, as when this was first measured) for `steps` steps as a whole
    process: alone, and two at once (as in a sweep or on a shared CI runner), with threads=auto (one
    thread for this small model) and with torch's default."""
    import os
    import subprocess

    default = DEFAULT_THREADS
    args = [sys.executable, "-m", "gallery.gan", "data=ring8", "hidden=128", f"steps={steps}",
            f"eval_every={steps}", "log_every=500", "eval_samples=500", f"device={device}"]

    def wall(threads: str, copies: int) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            procs = [subprocess.Popen([*args, f"threads={threads}", f"out_dir={tmp}/{i}"], cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env=os.environ.copy())
                     for i in range(copies)]
            if any(p.wait() != 0 for p in procs):
                raise RuntimeError(f"a gallery.gan run with threads={threads} failed")
            return time.perf_counter() - start

    rows = []
    for label, threads in (("auto", "auto"), (f"torch default ({default})", str(default))):
        alone, pair = wall(threads, 1), wall(threads, 2)
        rows.append({"threads": label, "steps": steps, "alone_seconds": alone,
                     "two_at_once_seconds": pair, "slowdown_two_at_once_over_alone": pair / alone})
    auto_row, default_row = rows
    pair_ratio = default_row["two_at_once_seconds"] / auto_row["two_at_once_seconds"]
    alone_ratio = default_row["alone_seconds"] / auto_row["alone_seconds"]
    rows.append({"default_pair_over_auto_pair": pair_ratio,
                 "default_alone_over_auto_alone": alone_ratio})
    return rows


# --- smoke ---------------------------------------------------------------------------------------

def bench_smoke(device: torch.device) -> list[dict]:
    """`python -m gallery smoke` as a CI job runs it: a whole process, every example (median of
    3)."""
    import statistics as stats

    seconds = [process_seconds([sys.executable, "-m", "gallery", "smoke", f"device={device}"],
                               ROOT) for _ in range(3)]
    return [{"command": f"python -m gallery smoke device={device}",
             "median_seconds": stats.median(seconds), "max_seconds": max(seconds)}]


# --- start-up ------------------------------------------------------------------------------------

def bench_startup(device: torch.device, rounds: int = 5) -> list[dict]:
    """`python -m gallery.<example> --help` and a bad input (`steps=0`, refused in one line, exit 2)
    as whole processes, each paired with `python -c "import torch"` run just before it: the median
    of the pair-by-pair ratios. Target: at most 1.15 (the gallery adds little to importing torch
    before it answers)."""
    import subprocess

    def seconds(*args: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return time.perf_counter() - start

    from gallery.core.registry import examples

    rows = []
    for name in examples():
        ratios: dict[str, list[float]] = {"help": [], "bad_input": []}
        seconds("-c", "import torch")  # warm the file cache
        for _ in range(rounds):
            for kind, args in (("help", ["--help"]), ("bad_input", ["steps=0"])):
                torch_alone = seconds("-c", "import torch")
                ratios[kind].append(seconds("-m", f"gallery.{name}", *args) / torch_alone)
        rows.append({"command": f"python -m gallery.{name} --help | steps=0", "rounds": rounds,
                     "help_over_import_torch": statistics.median(ratios["help"]),
                     "bad_input_over_import_torch": statistics.median(ratios["bad_input"]),
                     "target": 1.15})
    return rows


# --- compile --------------------------------------------------------------------------------------

def run_seconds(example: str, steps: int, compiled: bool, device: torch.device,
                *args: str) -> float:
    """One whole `python -m gallery.<example>` process, with an empty inductor cache (a cold
    compile, as on a new machine)."""
    with tempfile.TemporaryDirectory() as tmp:
        return process_seconds([sys.executable, "-m", f"gallery.{example}", f"steps={steps}",
                                f"eval_every={steps}", *args, f"compile={str(compiled).lower()}",
                                f"device={device}", "progress=false", f"out_dir={tmp}/run"], ROOT,
                               {"TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor"})


def bench_compile(device: torch.device) -> list[dict]:
    """compile=true against eager, whole processes of the tbptt character RNN (one model, compiled
    whole) at two lengths, each with an empty inductor cache: the difference at the short length is
    the cold warm-up; the per-chunk time between the lengths is what compiling buys once warm."""
    short, long, rounds = 10, 110, 3
    runs: dict = {}
    for _ in range(rounds):  # alternating, median of the rounds
        for n in (short, long):
            for c in (False, True):
                runs.setdefault((n, c), []).append(
                    run_seconds("tbptt", n, c, device, "log_every=10"))
    t = {key: statistics.median(values) for key, values in runs.items()}
    per_chunk = {c: (t[long, c] - t[short, c]) / (long - short) for c in (False, True)}
    return [{"setting": f"python -m gallery.tbptt, whole process, {short} and {long} chunks (the "
                        f"default model), median of {rounds} alternating rounds",
             "eager_seconds_short": t[short, False], "compiled_seconds_short": t[short, True],
             "warmup_seconds": t[short, True] - t[short, False],
             "eager_sec_per_chunk": per_chunk[False], "compiled_sec_per_chunk": per_chunk[True],
             "compiled_speedup_once_warm": per_chunk[False] / per_chunk[True]}]


def bench_cuda_graphs(device: torch.device, short: int = 1_500, long: int = 4_500) -> list[dict]:
    """gallery.sac with compile=true, which on CUDA replays each compiled net as a CUDA graph,
    against eager: whole processes at two lengths past the random warm-up (1,000 steps), one update
    per env step. The env steps/s between the two lengths leave out start-up and compilation. The
    aim (issue 27): >= 2x eager, as a small net's update on a GPU is bound by kernel launches."""
    if device.type != "cuda":
        return [{"skipped": "CUDA graphs replay on a GPU only: scripts/bench.py cuda_graphs "
                            "--device cuda"}]
    t = {(n, c): run_seconds("sac", n, c, device, "eval_episodes=1")
         for n in (short, long) for c in (False, True)}
    rate = {c: (long - short) / (t[long, c] - t[short, c]) for c in (False, True)}
    return [{"setting": f"python -m gallery.sac, whole processes of {short:,} and {long:,} env "
                        "steps, eager and compile=true",
             "eager_env_steps_per_sec": rate[False], "compiled_env_steps_per_sec": rate[True],
             "compile_seconds": t[short, True] - t[short, False],
             "compiled_over_eager": rate[True] / rate[False], "target": 2.0}]


VQ_PEER_DEPS = ("vector-quantize-pytorch", "einops", "einx", "frozendict", "loguru",
                "torch-einops-utils")  # --no-deps: the peer runs on the project's own torch


def vq_peer_path() -> Path | None:
    """vector-quantize-pytorch and what it imports, installed once with pip --target into the
    gallery's cache (never a dependency of the gallery); None when it cannot be installed."""
    import subprocess

    from gallery.core.config import cache_root

    deps = cache_root() / "vq-peer-deps"
    if not (deps / ".installed").is_file():
        print(f"installing {' '.join(VQ_PEER_DEPS)} into {deps} (once)", flush=True)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                               "--target", str(deps), "--disable-pip-version-check",
                               *VQ_PEER_DEPS], capture_output=True, text=True)
        if done.returncode != 0:
            return None
        (deps / ".installed").write_text("")
    return deps


def bench_vqvae(device: torch.device, seeds: int = 3) -> list[dict]:
    """The gallery's `quantize` against vector-quantize-pytorch's VectorQuantize in its place: the
    same encoder and decoder, digits, seeds, steps, batches and Adam, one thread each. The library
    runs twice: with a codebook learned by gradient (as the gallery's) and with its default EMA
    codebook. Per seed the three train in turn; steps/s is the training loop's own (evaluation
    aside); the figures are medians over seeds."""
    from gallery import vqvae as vq
    from gallery.data import images

    deps = vq_peer_path()
    if deps is None:
        return [{"skipped": "vector-quantize-pytorch could not be installed (no package index?)"}]
    sys.path.insert(0, str(deps))
    from vector_quantize_pytorch import VectorQuantize

    cfg = to_schema(compose("vqvae", ["device=cpu"]))
    xt, xv = (t.to(device) for t in vq.load_data(cfg))
    torch.set_num_threads(1)

    def library(ema: bool):
        return VectorQuantize(dim=cfg.code_dim, codebook_size=cfg.codebook_size,
                              commitment_weight=cfg.beta, accept_image_fmap=True,
                              learnable_codebook=not ema, ema_update=ema).to(device)

    def run(side: str, seed: int) -> dict:
        torch.manual_seed(seed)
        model = vq.VQVAE(xt.shape[1], cfg.hidden, cfg.code_dim, cfg.codebook_size, 1).to(device)
        peer = None if side == "gallery" else library(ema=side == "library_ema")
        params = [*model.parameters(), *(peer.parameters() if peer is not None else [])]
        optimizer = torch.optim.Adam([p for p in params if p.requires_grad], lr=cfg.lr)
        batches = images.IndexBatches(len(xt), cfg.batch_size,
                                      torch.Generator().manual_seed(seed))
        sync(device)
        start = time.perf_counter()
        for _ in range(cfg.steps):
            x = xt[next(batches).to(device)]
            if peer is None:
                vq.vq_step(model, optimizer, x, cfg.beta)
                continue
            z_q, _, vq_loss = peer(model.encoder(x))
            loss = F.mse_loss(model.decoder(z_q), x) + vq_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            model.eval()
            z = model.encoder(xv)
            if peer is None:
                z_q, codes, _, _ = vq.quantize(z, model.codebook)
            else:
                peer.eval()
                z_q, codes, _ = peer(z)
            mse = float(F.mse_loss(model.decoder(z_q), xv))
        perplexity, used = vq.code_usage(codes, cfg.codebook_size)
        return {"steps_per_sec": cfg.steps / seconds, "recon_mse": mse, "perplexity": perplexity,
                "codes_used": used}

    sides = ("gallery", "library_learned", "library_ema")
    runs = {side: [] for side in sides}
    for seed in range(seeds):
        for side in sides:
            runs[side].append(run(side, seed))
            print(f"  vqvae {side} seed={seed}: {runs[side][-1]}", flush=True)
    med = {side: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
           for side, rows in runs.items()}
    import vector_quantize_pytorch

    version = getattr(vector_quantize_pytorch, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("vector-quantize-pytorch")
    row = {"setting": f"digits, default config ({cfg.steps} steps, batch {cfg.batch_size}, "
                      f"K={cfg.codebook_size}), seeds 0-{seeds - 1}, 1 thread, medians",
           "peer": f"vector-quantize-pytorch {version}"}
    for side in sides:
        row.update({f"{side}_{k}": v for k, v in med[side].items()})
    for side in sides[1:]:
        row[f"speed_gallery_over_{side}"] = med["gallery"]["steps_per_sec"] / \
            med[side]["steps_per_sec"]
        row[f"recon_mse_gallery_over_{side}"] = med["gallery"]["recon_mse"] / \
            med[side]["recon_mse"]
    row.update({"target_speed": 1.5, "target_recon_mse_ratio": 1.1})
    return [row]


# --- sb3: Stable-Baselines3, the library most users pick first -----------------------------------

SB3_PEER_DEPS = ("stable-baselines3==2.9.2", "cloudpickle", "pandas", "python-dateutil", "pytz",
                 "tzdata", "six")  # --no-deps: the peer runs on the project's torch and gymnasium
# RL Zoo's settings (scripts/sb3_peer.py holds SB3's side), in the gallery's keys: CartPole-v1 for
# dqn, ppo and a2c, Pendulum-v1 for sac. Where the gallery has no such knob (SB3's A2C steps
# RMSprop, its SAC and A2C keep actor and critic in separate nets) the gallery keeps its own.
SB3_DQN = ["env.num_envs=1", "lr=2.3e-3", "batch_size=64", "buffer_size=100000",
           "learning_starts=1000", "target_sync_every=10", "updates_per_step=0.5", "hidden=256",
           "eps_end=0.04", "eps_decay_steps=8000", "double_dqn=false", "gamma=0.99",
           "steps=50000"]
SB3_PPO = ["env.num_envs=8", "rollout_steps=32", "minibatch_size=256", "epochs=20",
           "gae_lambda=0.8", "gamma=0.98", "lr=1e-3", "clip=0.2", "ent_coef=0.0", "hidden=64",
           "steps=100000"]  # the gallery's own defaults
SB3_A2C = ["env.num_envs=8", "rollout_steps=5", "lr=7e-4", "gamma=0.99", "gae_lambda=1.0",
           "ent_coef=0.0", "vf_coef=0.5", "max_grad_norm=0.5", "hidden=64", "steps=50000"]
SB3_SAC = ["env.num_envs=1", "hidden=256", "lr=1e-3", "batch_size=256", "buffer_size=1000000",
           "learning_starts=100", "tau=0.005", "gamma=0.99", "steps=5000"]
SB3_SPEED = {"dqn": SB3_DQN, "ppo": SB3_PPO, "a2c": SB3_A2C, "sac": SB3_SAC}
# time to solve: the env, its threshold, and the gallery's default evaluation cadence
SB3_SOLVE = {"dqn": ("CartPole-v1", 475, 2500), "ppo": ("CartPole-v1", 475, 10000),
             "sac": ("Pendulum-v1", -200, 2000)}
NO_VALUE_CHECK = {"ppo": ["value_check_episodes=0"], "a2c": ["value_check_episodes=0"]}


def sb3_peer_path() -> Path | None:
    """stable-baselines3 and what it imports beyond the gallery's dependencies, installed once
    with pip --target into the gallery's cache; None when it cannot be installed."""
    import subprocess

    from gallery.core.config import cache_root

    deps = cache_root() / "sb3-peer-deps"
    if not (deps / ".installed").is_file():
        print(f"installing {' '.join(SB3_PEER_DEPS)} into {deps} (once)", flush=True)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                               "--target", str(deps), "--disable-pip-version-check",
                               *SB3_PEER_DEPS], capture_output=True, text=True)
        if done.returncode != 0:
            return None
        (deps / ".installed").write_text("")
    return deps


def bench_sb3(device: torch.device, algos: str | None = None, pairs: int = 3,
              seeds: int = 3) -> list[dict]:
    """Stable-Baselines3 2.9.2 on the project's torch, against the gallery, on the CPU; `algos`
    (comma-separated) runs some of dqn, ppo, a2c, sac and keeps the others' rows in the JSON.

    - speed: each algorithm at RL Zoo's settings (`SB3_SPEED`), the gallery at the same, no
      evaluation on either side but the gallery's one at the end, whole processes, `pairs` pairs in
      turn; the median of the per-pair ratios. Beside it, the gallery's train() call and a minimal
      loop of the same pattern functions (env step, forward, update, nothing else) in this process,
      against SB3's own `learn()` seconds: how far the gallery could go at these settings;
    - time to solve (dqn, ppo, sac): each side at its own published settings (the gallery's
      defaults; RL Zoo's), evaluated on 10 deterministic episodes at the gallery's cadence,
      stopping at the first mean at the threshold: wall seconds from process start to exit, and
      the env steps, seeds 0 to `seeds` - 1, medians. A run that does not solve within its budget
      counts as its budget's time."""
    import json

    from gallery import a2c, dqn, ppo, sac  # noqa: F401 - importing registers their schemas

    if device.type != "cpu":
        return [{"skipped": "whole-process comparisons run on the CPU"}]
    peer = sb3_peer_path()
    if peer is None:
        return [{"skipped": f"stable-baselines3 could not be installed into the cache "
                            f"({' '.join(SB3_PEER_DEPS)})"}]
    chosen = algos.split(",") if algos else list(SB3_SPEED)

    def sb3(algo: str, *extra: str) -> tuple[float, dict]:
        seconds, out = process_run([sys.executable, str(ROOT / "scripts" / "sb3_peer.py"), algo,
                                    *extra], ROOT, {"PYTHONPATH": str(peer)})
        return seconds, json.loads(out.strip().splitlines()[-1])

    def gallery(name: str, out: str, *overrides: str) -> tuple[float, dict]:
        seconds, _ = process_run([sys.executable, "-m", f"gallery.{name}", *overrides,
                                  "device=cpu", "progress=false", f"out_dir={out}"], ROOT)
        return seconds, json.loads((Path(out) / "summary.json").read_text())

    rows = []
    for name in chosen:
        overrides, steps = SB3_SPEED[name], int(SB3_SPEED[name][-1].split("=")[1])
        once = [*overrides, f"eval_every={steps}", "stop_when_solved=false", "eval_episodes=1",
                *NO_VALUE_CHECK.get(name, [])]
        times: dict[str, list[float]] = {"sb3": [], "gallery": [], "sb3_learn": []}
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(pairs):
                seconds, result = sb3(name, "--seed", str(i), "--steps", str(steps))
                times["sb3"].append(seconds)
                times["sb3_learn"].append(result["learn_seconds"])
                times["gallery"].append(gallery(name, f"{tmp}/{i}", *once, f"seed={i}")[0])
                print(f"  {name} speed, pair {i + 1}/{pairs}: sb3 {times['sb3'][-1]:.1f} s, the "
                      f"gallery {times['gallery'][-1]:.1f} s", flush=True)
        ratios = [s / g for s, g in zip(times["sb3"], times["gallery"])]
        loops = in_process_loops(name, once, device)
        sb3_rate = steps / statistics.median(times["sb3_learn"])
        rows.append({"setting": f"{name}: RL Zoo's {'Pendulum' if name == 'sac' else 'CartPole'}"
                                f"-v1 settings, both sides, steps={steps}, whole processes, "
                                f"{pairs} pairs in turn",
                     "sb3_seconds": statistics.median(times["sb3"]),
                     "gallery_seconds": statistics.median(times["gallery"]),
                     "speed_ratio_per_pair": ratios,
                     "gallery_speed_over_sb3": statistics.median(ratios), "target": 2.0,
                     "sb3_learn_env_steps_per_sec": sb3_rate,
                     "gallery_train_env_steps_per_sec": loops["gallery"],
                     "minimal_loop_env_steps_per_sec": loops["minimal"],
                     "gallery_train_over_sb3_learn": loops["gallery"] / sb3_rate,
                     "minimal_loop_over_sb3_learn": loops["minimal"] / sb3_rate,
                     "gallery_train_fraction_of_minimal": loops["gallery"] / loops["minimal"]})
    for name in [n for n in chosen if n in SB3_SOLVE]:
        env_id, threshold, every = SB3_SOLVE[name]
        solved: dict[str, list] = {"sb3": [], "gallery": []}
        with tempfile.TemporaryDirectory() as tmp:
            for seed in range(seeds):
                seconds, result = sb3(name, "--seed", str(seed), "--solve", str(every))
                solved["sb3"].append((seconds, result["solved_at"]))
                seconds, summary = gallery(name, f"{tmp}/{seed}", f"seed={seed}",
                                           "stop_when_solved=true", "eval_episodes=10",
                                           *NO_VALUE_CHECK.get(name, []))
                solved["gallery"].append((seconds, summary["first_solved_step"]))
                print(f"  {name} time to solve, seed {seed}: sb3 {solved['sb3'][-1]}, the "
                      f"gallery {solved['gallery'][-1]} (seconds, env steps)", flush=True)
        med = {side: (statistics.median(s for s, _ in runs),
                      statistics.median(n for _, n in runs if n is not None)
                      if any(n is not None for _, n in runs) else None)
               for side, runs in solved.items()}
        rows.append({"setting": f"{name}: time to solve {env_id} ({threshold} over 10 episodes, "
                                f"evaluated every {every:,} env steps), each side at its own "
                                f"settings, seeds 0-{seeds - 1}, whole processes",
                     "env_id": env_id, "threshold": threshold,
                     "sb3_seconds_to_solve": med["sb3"][0],
                     "gallery_seconds_to_solve": med["gallery"][0],
                     "sb3_env_steps_to_solve": med["sb3"][1],
                     "gallery_env_steps_to_solve": med["gallery"][1],
                     "sb3_seconds_per_seed": [s for s, _ in solved["sb3"]],
                     "sb3_env_steps_per_seed": [n for _, n in solved["sb3"]],
                     "gallery_seconds_per_seed": [s for s, _ in solved["gallery"]],
                     "gallery_env_steps_per_seed": [n for _, n in solved["gallery"]],
                     "gallery_time_fraction_of_sb3": med["gallery"][0] / med["sb3"][0],
                     "target_fraction": 1 / 2 if name == "sac" else 1 / 3})
    return rows


MINIMAL_LOOPS = {"dqn": minimal_dqn_loop, "ppo": minimal_ppo_loop, "a2c": minimal_a2c_loop,
                 "sac": minimal_sac_loop}


def in_process_loops(name: str, overrides: list[str], device: torch.device,
                     rounds: int = 2) -> dict[str, float]:
    """Env steps/s of the gallery's train() (the whole call) and of the minimal loop of the same
    pattern functions, at the same settings, in this process on the threads train() chose
    (threads=auto), `rounds` rounds in turn, medians."""
    module = importlib.import_module(f"gallery.{name}")
    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())  # the first optimizer imports dynamo
    import matplotlib.pyplot  # noqa: F401 - the first figure's import is not the loop's cost
    rates: dict[str, list[float]] = {"gallery": [], "minimal": []}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            summary = module.train(config(name, f"device={device}", *overrides, "progress=false",
                                          f"out_dir={tmp}/run"))
            rates["gallery"].append(summary["env_steps"] / (time.perf_counter() - start))
        # the minimal loop on the threads train() chose (threads=auto)
        rates["minimal"].append(MINIMAL_LOOPS[name](
            to_schema(config(name, f"device={device}", *overrides)), device))
    torch.set_num_threads(DEFAULT_THREADS)
    return {side: statistics.median(values) for side, values in rates.items()}


# --- chain: the RL nets with and without the per-layer hook dispatch ------------------------------

def bench_chain(device: torch.device) -> list[dict]:
    """dqn's and ppo's whole train() with their nets made hookless (gallery.nets.Chain: each
    layer's forward called directly), against the same train() on plain nn.Sequential, in turns,
    3 pairs each; the median of the per-pair ratios."""

    from gallery import dqn, ppo
    from gallery.nets import hookless

    runs = {"dqn": (dqn, ["steps=20000", "stop_when_solved=false", "eval_every=20000",
                          "eval_episodes=2"]),
            "ppo": (ppo, ["steps=20480", "stop_when_solved=false", "eval_every=20480",
                          "eval_episodes=2", "value_check_episodes=0"])}
    rows = []
    for name, (module, overrides) in runs.items():
        ratios, seconds = [], {"plain": [], "hookless": []}
        for pair in range(3):
            for side, wrap in (("plain", lambda m: m), ("hookless", hookless)):
                module.hookless = wrap
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    module.train(config(name, f"device={device}", f"seed={pair}", *overrides,
                                        f"out_dir={tmp}/run"))
                    seconds[side].append(time.perf_counter() - start)
            module.hookless = hookless
            ratios.append(seconds["plain"][-1] / seconds["hookless"][-1])
        rows.append({"example": name, "steps": overrides[0].split("=")[1],
                     "plain_seconds_median": statistics.median(seconds["plain"]),
                     "hookless_seconds_median": statistics.median(seconds["hookless"]),
                     "speedup_hookless_over_plain": statistics.median(ratios),
                     "pair_ratios": [round(r, 3) for r in ratios]})
    return rows


BENCHES = {"gan": bench_gan, "dqn": bench_dqn, "finetune": bench_finetune, "ppo": bench_ppo,
           "sac": bench_sac, "dqn_envs": bench_dqn_envs, "tbptt": bench_tbptt,
           "threads": bench_threads, "smoke": bench_smoke, "compile": bench_compile,
           "startup": bench_startup, "cleanrl": bench_cleanrl,
           "cuda_graphs": bench_cuda_graphs, "vqvae": bench_vqvae, "chain": bench_chain,
           "sb3": bench_sb3, "check": lambda device: bench_check(device, alternate)}


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os

    return (f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, "
            f"torch's default {DEFAULT_THREADS} threads")


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """Rows keyed by the algorithm that opens their setting ("dqn: ..."): each new row replaces the
    old row of its algorithm and kind (speed, or time to solve); speed rows first."""
    def key(row: dict) -> tuple[str, bool]:
        return row.get("setting", "").split(":")[0], "gallery_seconds_to_solve" in row

    fresh = {key(row) for row in new}
    rows = [row for row in old if key(row) not in fresh] + new
    order = list(SB3_SPEED)
    return sorted(rows, key=lambda r: (key(r)[1], order.index(key(r)[0])
                                       if key(r)[0] in order else len(order)))


def main() -> int:
    parser = argparse.ArgumentParser(description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="?", default="all", choices=[*BENCHES, "all"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--baseline", help="dqn: also time whole processes of this git ref against "
                                           "the checkout")
    parser.add_argument("--cleanrl", help="cleanrl: a local clone of github.com/vwxyzjn/cleanrl")
    parser.add_argument("--algos", help="sb3: some of dqn,ppo,a2c,sac (comma-separated); the "
                                        "others' rows in --json are kept")
    args = parser.parse_args()
    device = resolve_device(args.device)
    results = {"machine": machine(device), "torch": torch.__version__}
    for name in BENCHES if args.which == "all" else [args.which]:
        # a short .train() inside a bench may have set threads=auto
        torch.set_num_threads(DEFAULT_THREADS)
        print(f"## {name} ({results['machine']})", flush=True)
        extra = {"dqn": [args.baseline], "cleanrl": [args.cleanrl],
                 "sb3": [args.algos]}.get(name, [])
        rows = BENCHES[name](device, *extra)
        results[name] = rows
        for row in rows:
            for key, value in row.items():
                print(f"  {key}: {fmt(value)}")
            print()
    if args.json:  # merged: a bench run for one example keeps the others' entries
        merged = json.loads(args.json.read_text()) if args.json.exists() else {}
        if args.algos and "sb3" in results:  # the algorithms not run this time keep their rows
            results["sb3"] = merge_rows(merged.get("sb3", []), results["sb3"])
        merged.update(results)
        args.json.write_text(json.dumps(merged, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
