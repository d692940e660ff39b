"""Gymnasium envs for the RL examples: the env config, vector envs with SAME_STEP autoreset, the
true next observation of every transition, episode returns, and greedy evaluation."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from gallery.core.errors import ConfigError, RunFault

if TYPE_CHECKING:  # gymnasium is imported where an env is made: `--help` and bad input skip it
    import gymnasium as gym


@dataclass
class EnvConfig:
    id: str = "CartPole-v1"
    num_envs: int = 4
    vectorization: str = "sync"  # sync | async
    reward_threshold: float | None = None  # None: the env spec's own (475 for CartPole-v1)
    max_episode_steps: int | None = None  # None: the env spec's own time limit


def make_envs(env: EnvConfig, example: str, eval_episodes: int, space: str = "Discrete",
              instead: str = "CartPole-v1, Acrobot-v1, MountainCar-v0"
              ) -> tuple[gym.vector.VectorEnv, gym.vector.VectorEnv]:
    """The training vector env and the evaluation one (a sub-env per evaluation episode); an action
    space (a gymnasium.spaces class name) `example` cannot use is a clear error."""
    import gymnasium as gym

    try:
        limit = {"max_episode_steps": env.max_episode_steps} if env.max_episode_steps else {}
        # SAME_STEP autoreset: a finished sub-env is reset inside step(), and the true last
        # observation comes back in info["final_obs"], so every stored transition is a real one.
        same_step = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
        envs = gym.make_vec(env.id, num_envs=env.num_envs, vectorization_mode=env.vectorization,
                            vector_kwargs=same_step, **limit)
        eval_envs = gym.make_vec(env.id, num_envs=eval_episodes, vectorization_mode="sync", **limit)
    except gym.error.Error as err:
        raise ConfigError(f"env.id={env.id!r}: {err}") from err
    if not isinstance(envs.single_action_space, getattr(gym.spaces, space)):
        envs.close()
        eval_envs.close()
        kind = type(envs.single_action_space).__name__
        raise ConfigError(f"env.id={env.id!r} has a {kind} action space; {example} needs a {space} "
                          f"one (try {instead})")
    return Guarded(envs, env.id), Guarded(eval_envs, env.id)


class Guarded:
    """A vector env whose `step` or `reset` raising ends the run as a fault (one line, the last
    checkpoint kept) rather than a traceback: an env is code from elsewhere. Everything else is the
    env's own."""

    def __init__(self, envs: gym.vector.VectorEnv, env_id: str):
        self.envs, self.env_id = envs, env_id

    def __getattr__(self, name: str):
        return getattr(self.envs, name)

    def step(self, actions):
        try:
            return self.envs.step(actions)
        except Exception as err:
            raise RunFault(f"env {self.env_id} raised in step(): {type(err).__name__}: "
                           f"{err}") from err

    def reset(self, **kwargs):
        try:
            return self.envs.reset(**kwargs)
        except Exception as err:
            raise RunFault(f"env {self.env_id} raised in reset(): {type(err).__name__}: "
                           f"{err}") from err


def reward_threshold(env: EnvConfig, envs: gym.vector.VectorEnv) -> float | None:
    """The return that counts as solved: the config's, else the env spec's (None: never solved)."""
    return env.reward_threshold or getattr(envs.spec, "reward_threshold", None)


def space_sizes(envs: gym.vector.VectorEnv) -> tuple[int, int]:
    """(observation size, number of actions or action size) of one sub-env."""
    action = envs.single_action_space
    n_actions = int(action.n) if hasattr(action, "n") else int(np.prod(action.shape))
    return int(np.prod(envs.single_observation_space.shape)), n_actions


def env_step(envs: gym.vector.VectorEnv, actions: np.ndarray):
    """Step every sub-env. Returns (the obs to act on next, each transition's true next obs,
    rewards, terminated, info). A finished sub-env is already reset (SAME_STEP autoreset), so its
    true next obs is the final one from info, not the fresh reset obs."""
    next_obs, rewards, terminated, _truncated, info = envs.step(actions)
    real_next = next_obs.copy()
    if "_final_obs" in info:
        for i in np.flatnonzero(info["_final_obs"]):
            real_next[i] = info["final_obs"][i]
    return next_obs, real_next, rewards, terminated, info


class EpisodeReturns:
    """Each sub-env's return so far, and the returns of the episodes that ended since the last
    `pop_mean`: what Gymnasium's RecordEpisodeStatistics wrapper keeps, without a wrapper's pass
    over every step."""

    def __init__(self, n: int):
        self.running, self.ended = np.zeros(n), []

    def add(self, rewards: np.ndarray, info: dict) -> None:
        self.running += rewards
        if "_final_obs" in info:  # these sub-envs ended an episode this step (SAME_STEP autoreset)
            self.ended += self.running[info["_final_obs"]].tolist()
            self.running[info["_final_obs"]] = 0.0

    def pop_mean(self) -> float | None:
        mean, self.ended = (float(np.mean(self.ended)) if self.ended else None), []
        return mean


@torch.no_grad()
def evaluate(act, envs: gym.vector.VectorEnv, seed: int, device: torch.device) -> dict:
    """Returns of a deterministic policy, one episode per sub-env, all stepped at once: one batched
    forward pass per step. Sub-env i is reset with seed + i, as the i-th episode of a sequential
    evaluation would be. `act` maps a batch of observations to the actions envs.step takes (the
    argmax of Q-values or logits, a squashed Gaussian mean)."""
    obs, _ = envs.reset(seed=seed)
    returns, done = np.zeros(envs.num_envs), np.zeros(envs.num_envs, dtype=bool)
    while not done.all():
        actions = act(torch.as_tensor(obs, dtype=torch.float32, device=device))
        obs, rewards, terminated, truncated, _ = envs.step(actions.cpu().numpy())
        returns += np.where(done, 0.0, rewards)  # a sub-env past its episode's end counts no more
        done |= terminated | truncated
    return {"eval_return_mean": float(np.mean(returns)), "eval_return_std": float(np.std(returns))}


@torch.no_grad()  # a measurement: no graph
def value_bias(act, value, env_id: str, time_limit: int, episodes: int, gamma: float, seed: int,
               device: torch.device) -> dict:
    """A critic's values against Monte-Carlo returns of the task without its time limit: `act`
    (one observation -> an action) plays for up to `time_limit` + 400 steps, and each state of the
    first `time_limit` is scored against its discounted return to the end (the tail past 400
    steps adds at most gamma**400 / (1 - gamma)). `value` maps a batch of observations to values."""
    import gymnasium as gym  # heavy: imported where an env is made

    if not episodes or not time_limit:  # an env without a time limit has nothing to check
        return {}
    env, errors = gym.make(env_id, max_episode_steps=time_limit + 400), []
    with contextlib.closing(env):
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            states, rewards, done = [], [], False
            while not done:
                o = torch.as_tensor(obs, dtype=torch.float32, device=device)
                states.append(o)
                obs, reward, terminated, truncated, _ = env.step(int(act(o)))
                rewards.append(float(reward))
                done = terminated or truncated
            returns, g = np.zeros(len(rewards)), 0.0
            for t in reversed(range(len(rewards))):
                returns[t] = g = rewards[t] + gamma * g
            n = min(time_limit, len(states))
            values = value(torch.stack(states[:n])).cpu().numpy()
            errors.append(values - returns[:n])
    errors = np.concatenate(errors)
    return {"value_bias": float(errors.mean()), "value_abs_error": float(np.abs(errors).mean())}


def greedy(net):
    """The evaluation policy of a discrete-action agent: in each sub-env, the action with the
    highest output (a logit, a Q-value), with no graph."""
    @torch.no_grad()
    def act(obs: torch.Tensor) -> torch.Tensor:
        return net(obs).argmax(1)
    return act


def outcome(s: dict) -> str:
    """A CartPole-style run's result in words: its eval return, when it first solved (or how many
    env steps it ran without), and its critic's bias where measured."""
    solved = (f"first solved at {s['first_solved_step']:,} env steps"
              if s["first_solved_step"] is not None
              else f"not solved in {s['env_steps']:,} env steps")
    bias = "" if s.get("value_bias") is None else (f", value bias vs Monte-Carlo "
                                                   f"{s['value_bias']:+.1f}")
    return f"eval return {s['eval_return_mean']:.1f}, {solved}{bias}"
