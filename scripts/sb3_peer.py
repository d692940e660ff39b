#!/usr/bin/env bash
# Runs on the project's venv, made on first use: bash runs the next line; to Python it is a string.
''''. "$(dirname -- "$0")/_bootstrap.sh"; exec "$VENV/bin/python" "$0" "$@" # '''

# Stable-Baselines3 at RL Zoo's published hyperparameters: the peer that
# `scripts/bench.py sb3` times the gallery against, as a whole process. It needs
# stable-baselines3 on PYTHONPATH (bench.py installs it into the gallery's cache with pip --target;
# it is never a dependency of the gallery).
#
#     python scripts/sb3_peer.py dqn|ppo|a2c|sac --seed 0 [--steps N] [--solve EVAL_EVERY]
#
# dqn, ppo and a2c run CartPole-v1, sac runs Pendulum-v1. With --solve it evaluates every
# EVAL_EVERY env steps on 10 deterministic episodes and stops at the first mean at the env's
# threshold (475 on CartPole, -200 on Pendulum; RL Zoo's EvalCallback with
# StopTrainingOnRewardThreshold). The last line it prints is JSON: the env steps trained and, with
# --solve, the env steps at which it solved, and the seconds learn() took.

from __future__ import annotations

import argparse
import json
import time


def linear(start: float):
    """RL Zoo's `lin_<value>`: from `start` down to 0 over the run."""
    return lambda progress_remaining: progress_remaining * start


# RL Zoo hyperparams/<algo>.yml: (algorithm, env, n_envs, n_timesteps, arguments); what a yml
# leaves out is SB3's default (a2c: RMSprop, lr 7e-4, n_steps 5, gae_lambda 1; sac: batch 256,
# learning_starts 100, tau 0.005, one gradient step per env step, [256, 256], entropy auto)
ZOO = {
    "dqn": ("DQN", "CartPole-v1", 1, 50_000, {
        "learning_rate": 2.3e-3, "batch_size": 64, "buffer_size": 100_000,
        "learning_starts": 1000, "gamma": 0.99, "target_update_interval": 10, "train_freq": 256,
        "gradient_steps": 128, "exploration_fraction": 0.16, "exploration_final_eps": 0.04,
        "policy_kwargs": {"net_arch": [256, 256]}}),
    "ppo": ("PPO", "CartPole-v1", 8, 100_000, {
        "n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20,
        "ent_coef": 0.0, "learning_rate": linear(1e-3), "clip_range": linear(0.2)}),
    "a2c": ("A2C", "CartPole-v1", 8, 500_000, {"ent_coef": 0.0}),
    "sac": ("SAC", "Pendulum-v1", 1, 20_000, {"learning_rate": 1e-3}),
}
THRESHOLD = {"CartPole-v1": 475.0, "Pendulum-v1": -200.0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("algo", choices=sorted(ZOO))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=0, help="env steps (default: RL Zoo's)")
    parser.add_argument("--solve", type=int, default=0, help="evaluate every N env steps, stop "
                                                              "when solved")
    args = parser.parse_args()
    # the peer is imported once asked to run: --help works without it
    import stable_baselines3
    from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
    from stable_baselines3.common.env_util import make_vec_env

    name, env_id, n_envs, steps, kwargs = ZOO[args.algo]
    algo, threshold = getattr(stable_baselines3, name), THRESHOLD[env_id]
    envs = make_vec_env(env_id, n_envs=n_envs, seed=args.seed)
    model = algo("MlpPolicy", envs, seed=args.seed, device="cpu", verbose=0, **kwargs)
    callback = None
    if args.solve:
        stop = StopTrainingOnRewardThreshold(reward_threshold=threshold, verbose=0)
        callback = EvalCallback(make_vec_env(env_id, n_envs=1, seed=args.seed + 10_000),
                                callback_on_new_best=stop, eval_freq=max(args.solve // n_envs, 1),
                                n_eval_episodes=10, deterministic=True, verbose=0)
    start = time.perf_counter()
    model.learn(total_timesteps=args.steps or steps, callback=callback)
    seconds = time.perf_counter() - start
    solved = None
    if callback is not None and callback.best_mean_reward >= threshold:
        solved = model.num_timesteps
    print(json.dumps({"env_steps": model.num_timesteps, "solved_at": solved,
                      "learn_seconds": seconds}))


if __name__ == "__main__":
    main()
