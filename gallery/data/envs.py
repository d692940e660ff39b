"""Stepping Gymnasium vector envs for off-policy learning: the true next observation of every
transition, and the returns of the episodes that end."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


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
    """Each sub-env's return so far, and the returns of the episodes that ended since the last `pop_mean`:
    what Gymnasium's RecordEpisodeStatistics wrapper keeps, without a wrapper's pass over every step."""

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
