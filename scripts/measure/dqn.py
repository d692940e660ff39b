"""`scripts/bench.py dqn` and `dqn_envs`: the gallery's DQN loop against a minimal loop of the same
functions, target_grad's bytes, whole processes against a git ref, and vector envs sync against
async."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from gallery.core.config import to_schema
from gallery.core.probes import SavedTensorMeter
from scripts.measure.timing import ROOT, config, process_seconds, sync

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
