"""The DQN replay buffer: one preallocated table of transitions, saved and restored whole."""

from __future__ import annotations

import numpy as np
import torch

FIELDS = ("obs", "actions", "rewards", "terminated", "next_obs")


class ReplayBuffer:
    """A ring buffer with one float32 row per transition: obs | action | reward | terminated | next_obs.

    The table is a CPU tensor. `add` writes the env's NumPy arrays straight into a NumPy view of it
    (no tensor is built per env step); `sample` gathers a batch of rows and moves it to the training
    device in one copy. Actions are stored as floats, exact for any discrete action space below 2**24.
    """

    def __init__(self, capacity: int, obs_dim: int, device: torch.device):
        self.capacity, self.size, self.pos, self.device = capacity, 0, 0, torch.device(device)
        self.rows = torch.zeros(capacity, 2 * obs_dim + 3)
        self.table = self.rows.numpy()  # shares memory with self.rows
        d = obs_dim
        self.columns = {"obs": slice(0, d), "actions": d, "rewards": d + 1, "terminated": d + 2,
                        "next_obs": slice(d + 3, 2 * d + 3)}

    def add(self, obs, actions, rewards, next_obs, terminated) -> None:
        n, end = len(obs), self.pos + len(obs)
        at = slice(self.pos, end) if end <= self.capacity else np.arange(self.pos, end) % self.capacity
        for name, value in zip(FIELDS, (obs, actions, rewards, terminated, next_obs)):
            self.table[at, self.columns[name]] = value
        self.pos = end % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(self.size, (batch_size,), generator=generator)
        rows = self.rows[idx].to(self.device)
        batch = {name: rows[:, column] for name, column in self.columns.items()}
        batch["actions"] = batch["actions"].long()
        return batch

    def state_dict(self) -> dict:
        rows = self.rows[: self.size]
        state = {name: rows[:, column].clone() for name, column in self.columns.items()}
        state["actions"] = state["actions"].long()
        return {"pos": self.pos, "size": self.size, **state}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.size = state["pos"], state["size"]
        for name, column in self.columns.items():
            self.rows[: self.size, column] = state[name].to(self.rows.dtype)
