"""`scripts/bench.py sb3`: the gallery against Stable-Baselines3 at RL Zoo's settings, and time to
solve (SB3 installed with pip --target --no-deps, never a dependency)."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from scripts.measure.minimal_loops import in_process_loops
from scripts.measure.peers import peer_path
from scripts.measure.timing import ROOT, process_run

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
    return peer_path("sb3", SB3_PEER_DEPS)


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
