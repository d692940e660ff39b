"""The replay buffer of DQN and SAC: one preallocated table of transitions, saved and restored
whole."""

from __future__ import annotations

import numpy as np
import torch

FIELDS = ("obs", "actions", "rewards", "terminated", "next_obs")


class ReplayBuffer:
    """A ring buffer with one float32 row per transition: obs | action | reward | terminated |
    next_obs.

    The table lives on the training device, so `sample` is one gather there and no batch crosses
    from the host. `add` packs the env's NumPy arrays into one host row per transition and copies
    them into the table at once (a CPU table through its NumPy view; no index tensors per env step).
    A discrete action (`act_dim=None`) is one float column, exact below 2**24, and comes back as
    int64; a continuous one is `act_dim` float columns. `sample` draws from the buffer's own
    generator, seeded by `seed`. Checkpoints hold CPU tensors and the generator's state.
    """

    def __init__(self, capacity: int, obs_dim: int, device: torch.device,
                 act_dim: int | None = None, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)
        self.capacity, self.size, self.pos, self.device = capacity, 0, 0, torch.device(device)
        self.discrete, d, a = act_dim is None, obs_dim, act_dim or 1
        self.rows = torch.zeros(capacity, 2 * d + a + 2, device=self.device)
        self.view = self.rows.numpy() if self.rows.is_cpu else None  # shares memory with self.rows
        self.columns = {"obs": slice(0, d), "actions": d if self.discrete else slice(d, d + a),
                        "rewards": d + a, "terminated": d + a + 1,
                        "next_obs": slice(d + a + 2, 2 * d + a + 2)}

    def add(self, obs, actions, rewards, next_obs, terminated) -> None:
        n, end = len(obs), self.pos + len(obs)
        staged = np.empty((n, self.rows.shape[1]), np.float32)
        for name, value in zip(FIELDS, (obs, actions, rewards, terminated, next_obs)):
            staged[:, self.columns[name]] = value
        wraps = end > self.capacity
        at = np.arange(self.pos, end) % self.capacity if wraps else slice(self.pos, end)
        if self.view is not None:
            # a CPU table: through its NumPy view, no tensor indexing per env step
            self.view[at] = staged
        else:
            self.rows[at if isinstance(at, slice)
                      else torch.from_numpy(at)] = torch.from_numpy(staged).to(self.device)
        self.pos = end % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(self.size, (batch_size,), generator=self.generator)
        rows = self.rows[idx.to(self.device)]
        batch = {name: rows[:, column] for name, column in self.columns.items()}
        if self.discrete:
            batch["actions"] = batch["actions"].long()
        return batch

    def state_dict(self) -> dict:
        rows = self.rows[: self.size].cpu()
        state = {name: rows[:, column].clone() for name, column in self.columns.items()}
        if self.discrete:
            state["actions"] = state["actions"].long()
        return {"pos": self.pos, "size": self.size, "generator": self.generator.get_state(),
                **state}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.size = state["pos"], state["size"]
        self.generator.set_state(state["generator"])
        for name, column in self.columns.items():
            self.rows[: self.size, column] = state[name].to(self.rows.device, self.rows.dtype)
