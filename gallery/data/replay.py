"""The DQN replay buffer: preallocated tensors on the training device, saved and restored whole."""

from __future__ import annotations

import torch


class ReplayBuffer:
    """A ring buffer of preallocated tensors on the training device (no per-sample Python objects)."""

    def __init__(self, capacity: int, obs_dim: int, device: torch.device):
        self.capacity, self.size, self.pos = capacity, 0, 0
        self.obs = torch.zeros(capacity, obs_dim, device=device)
        self.next_obs = torch.zeros(capacity, obs_dim, device=device)
        self.actions = torch.zeros(capacity, dtype=torch.int64, device=device)
        self.rewards = torch.zeros(capacity, device=device)
        self.terminated = torch.zeros(capacity, device=device)

    def add(self, obs, actions, rewards, next_obs, terminated) -> None:
        n = len(obs)
        idx = (torch.arange(n) + self.pos) % self.capacity
        dev = self.obs.device
        self.obs[idx] = torch.as_tensor(obs, dtype=torch.float32, device=dev)
        self.next_obs[idx] = torch.as_tensor(next_obs, dtype=torch.float32, device=dev)
        self.actions[idx] = torch.as_tensor(actions, dtype=torch.int64, device=dev)
        self.rewards[idx] = torch.as_tensor(rewards, dtype=torch.float32, device=dev)
        self.terminated[idx] = torch.as_tensor(terminated, dtype=torch.float32, device=dev)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(self.size, (batch_size,), generator=generator).to(self.obs.device)
        return {"obs": self.obs[idx], "actions": self.actions[idx], "rewards": self.rewards[idx],
                "next_obs": self.next_obs[idx], "terminated": self.terminated[idx]}

    def state_dict(self) -> dict:
        n = self.size
        return {"pos": self.pos, "size": n, "obs": self.obs[:n].cpu(), "next_obs": self.next_obs[:n].cpu(),
                "actions": self.actions[:n].cpu(), "rewards": self.rewards[:n].cpu(),
                "terminated": self.terminated[:n].cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.size = state["pos"], state["size"]
        for key in ("obs", "next_obs", "actions", "rewards", "terminated"):
            getattr(self, key)[: self.size] = state[key].to(self.obs.device)
