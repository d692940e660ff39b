#!/usr/bin/env bash
# Runs on the project's venv, made on first use: bash runs the next line; to Python it is a string.
''''. "$(dirname -- "$0")/_bootstrap.sh"; exec "$VENV/bin/python" "$0" "$@" # '''

# Stable-Baselines3 at RL Zoo's published CartPole-v1 hyperparameters: the peer that
# `scripts/bench.py sb3` times the gallery against, as a whole process. It needs
# stable-baselines3 on PYTHONPATH (bench.py installs it into the gallery's cache with pip --target;
# it is never a dependency of the gallery).
#
#     python scripts/sb3_peer.py dqn|ppo --seed 0 [--solve EVAL_EVERY]
#
# With --solve it evaluates every EVAL_EVERY env steps on 10 deterministic episodes and stops at
# the first mean of 475 or more (RL Zoo's EvalCallback with StopTrainingOnRewardThreshold). The
# last line it prints is JSON: the env steps trained and, with --solve, the env steps at which it
# solved.

from __future__ import annotations

import argparse
import json


def linear(start: float):
    """RL Zoo's `lin_<value>`: from `start` down to 0 over the run."""
    return lambda progress_remaining: progress_remaining * start


# RL Zoo hyperparams/{dqn,ppo}.yml, CartPole-v1: (algorithm, n_envs, n_timesteps, arguments)
ZOO = {
    "dqn": ("DQN", 1, 50_000, {
        "learning_rate": 2.3e-3, "batch_size": 64, "buffer_size": 100_000,
        "learning_starts": 1000, "gamma": 0.99, "target_update_interval": 10, "train_freq": 256,
        "gradient_steps": 128, "exploration_fraction": 0.16, "exploration_final_eps": 0.04,
        "policy_kwargs": {"net_arch": [256, 256]}}),
    "ppo": ("PPO", 8, 100_000, {
        "n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20,
        "ent_coef": 0.0, "learning_rate": linear(1e-3), "clip_range": linear(0.2)}),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("algo", choices=sorted(ZOO))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--solve", type=int, default=0, help="evaluate every N env steps, stop "
                                                              "when solved")
    args = parser.parse_args()
    # the peer is imported once asked to run: --help works without it
    import stable_baselines3
    from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
    from stable_baselines3.common.env_util import make_vec_env

    name, n_envs, steps, kwargs = ZOO[args.algo]
    algo = getattr(stable_baselines3, name)
    envs = make_vec_env("CartPole-v1", n_envs=n_envs, seed=args.seed)
    model = algo("MlpPolicy", envs, seed=args.seed, device="cpu", verbose=0, **kwargs)
    callback = None
    if args.solve:
        stop = StopTrainingOnRewardThreshold(reward_threshold=475, verbose=0)
        callback = EvalCallback(make_vec_env("CartPole-v1", n_envs=1, seed=args.seed + 10_000),
                                callback_on_new_best=stop, eval_freq=max(args.solve // n_envs, 1),
                                n_eval_episodes=10, deterministic=True, verbose=0)
    model.learn(total_timesteps=steps, callback=callback)
    solved = None
    if callback is not None and callback.best_mean_reward >= 475:
        solved = model.num_timesteps
    print(json.dumps({"env_steps": model.num_timesteps, "solved_at": solved}))


if __name__ == "__main__":
    main()
