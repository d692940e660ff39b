"""DQN: bootstrap from a separate target network, and compute the TD target without a graph.

    with torch.no_grad():                                        # the target is a constant
        next_q = target_net(next_obs).max(1).values              # a frozen copy, synced on a schedule
        target = reward + gamma * (1 - terminated) * next_q      # truncation still bootstraps
    loss = huber(online_net(obs).gather(1, action), target)

The target network has requires_grad_(False), is never given to the optimizer, and syncs by a
hard copy every `target_sync_every` env steps (tau=1) or by a Polyak update every step (tau<1).
The mistakes (`mistake=`), and what they cost:

- no_target: bootstrap from the online network itself: the regression target moves with every update.
- target_grad: the target is computed with grad enabled through a copy that requires grad: target
  params accumulate .grad and each update saves more bytes for backward (scripts/bench.py dqn).
- no_target+target_grad: both: the gradient flows through both sides of the TD error (residual gradient).

Run: python -m gallery.dqn env.id=CartPole-v1 seed=0 out_dir=/tmp/dqn
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import gymnasium as gym
import hydra
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gallery.core import plots
from gallery.core.checkpoint import load_checkpoint, save_checkpoint
from gallery.core.config import (
    BaseConfig,
    print_help_if_asked,
    register_schema,
    require_choice,
    require_positive,
    require_range,
    run_cli,
    to_schema,
    validate_base,
)
from gallery.core.device import resolve_device
from gallery.core.errors import ConfigError
from gallery.core.probes import SavedTensorMeter
from gallery.core.registry import Example, Mistake
from gallery.core.run import Run, progress, resolve_out_dir
from gallery.core.seeding import rng_state, seed_everything, set_rng_state

EXAMPLE = Example(
    name="dqn",
    pattern="TD target under torch.no_grad() from a frozen target network synced on a schedule",
    mistakes={
        "no_target": Mistake(
            "bootstrap from the online network (still under no_grad)",
            "the regression target moves with every update; learning is slower and less stable",
        ),
        "target_grad": Mistake(
            "TD target computed with grad enabled through a target copy that requires grad",
            "target params accumulate .grad; more bytes saved for backward per update",
        ),
        "no_target+target_grad": Mistake(
            "both: bootstrap from the online net with grad enabled",
            "the residual gradient: the update also pushes the target toward the prediction",
        ),
    },
)


# --- config schema -----------------------------------------------------------------------------

@dataclass
class EnvConfig:
    id: str = "CartPole-v1"
    num_envs: int = 4
    vectorization: str = "sync"  # sync | async
    reward_threshold: float | None = None  # None: the env spec's own (475 for CartPole-v1)
    max_episode_steps: int | None = None  # None: the env spec's own time limit


@dataclass
class DqnConfig(BaseConfig):
    env: EnvConfig = field(default_factory=EnvConfig)
    steps: int = 50_000  # env steps, summed over the vector envs
    stop_when_solved: bool = True
    hidden: int = 256
    lr: float = 1e-3
    batch_size: int = 128
    gamma: float = 0.99
    buffer_size: int = 50_000
    learning_starts: int = 1_000
    updates_per_step: float = 0.5  # gradient updates per env step
    target_sync_every: int = 100  # env steps between hard copies (tau = 1)
    tau: float = 1.0  # < 1: Polyak update every gradient step instead
    double_dqn: bool = True
    max_grad_norm: float = 10.0
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_decay_steps: int = 5_000
    eval_every: int = 2_500
    eval_episodes: int = 10
    log_every: int = 1_000


register_schema("dqn", DqnConfig)
MISTAKE_PARTS = ("no_target", "target_grad")


def validate(cfg: DqnConfig) -> None:
    validate_base(cfg, EXAMPLE.mistakes)
    require_choice(cfg, "env.vectorization", ["sync", "async"])
    require_positive(cfg, "env.num_envs", "hidden", "lr", "batch_size", "buffer_size", "target_sync_every",
                     "eval_episodes", "updates_per_step", "eps_decay_steps")
    require_range(cfg, "gamma", 0.0, 1.0)
    require_range(cfg, "tau", 1e-6, 1.0)
    require_range(cfg, "eps_end", 0.0, 1.0)
    if cfg.batch_size > cfg.buffer_size:
        raise ConfigError(f"batch_size={cfg.batch_size} must be <= buffer_size={cfg.buffer_size}")


def make_envs(cfg: DqnConfig) -> tuple[gym.vector.VectorEnv, gym.Env]:
    try:
        limit = {"max_episode_steps": cfg.env.max_episode_steps} if cfg.env.max_episode_steps else {}
        envs = gym.make_vec(cfg.env.id, num_envs=cfg.env.num_envs, vectorization_mode=cfg.env.vectorization,
                            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}, **limit)
        eval_env = gym.make(cfg.env.id, **limit)
    except gym.error.Error as err:
        raise ConfigError(f"env.id={cfg.env.id!r}: {err}") from err
    if not isinstance(envs.single_action_space, gym.spaces.Discrete):
        envs.close()
        raise ConfigError(f"env.id={cfg.env.id!r} has a {type(envs.single_action_space).__name__} action "
                          "space; DQN needs a Discrete one (try CartPole-v1, Acrobot-v1, MountainCar-v0)")
    # SAME_STEP autoreset: a finished sub-env is reset inside step(), and the true last observation
    # comes back in info["final_obs"], so every stored transition is a real one.
    return gym.wrappers.vector.RecordEpisodeStatistics(envs), eval_env


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


# --- model and replay -----------------------------------------------------------------------------

def q_network(obs_dim: int, n_actions: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_actions))


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


# --- the pattern --------------------------------------------------------------------------------

def make_target(online: nn.Module) -> nn.Module:
    target = copy.deepcopy(online)
    target.requires_grad_(False)  # PATTERN: a frozen copy; it is never given to the optimizer
    return target


def td_target(bootstrap_net: nn.Module, online: nn.Module, batch: dict, gamma: float, double: bool) -> torch.Tensor:
    """r + gamma * (1 - terminated) * Q_boot(s', a'). Only `terminated` stops bootstrapping: a
    time-limit truncation is not a real end, so its next state's value still counts."""
    next_obs = batch["next_obs"]
    if double:  # Double DQN: the online net picks a', the bootstrap net scores it
        next_action = online(next_obs).argmax(1, keepdim=True)
        next_q = bootstrap_net(next_obs).gather(1, next_action).squeeze(1)
    else:
        next_q = bootstrap_net(next_obs).max(1).values
    return batch["rewards"] + gamma * (1.0 - batch["terminated"]) * next_q


@torch.no_grad()
def sync_target(target: nn.Module, online: nn.Module, tau: float) -> None:
    """PATTERN: tau=1 is a hard copy; tau<1 is Polyak averaging, in place and without a graph."""
    target_params, online_params = list(target.parameters()), list(online.parameters())
    if tau >= 1.0:
        torch._foreach_copy_(target_params, online_params)
    else:
        torch._foreach_lerp_(target_params, online_params, tau)  # t <- t + tau * (o - t)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)


def update(online, target, optimizer, batch: dict, cfg: DqnConfig) -> float:
    mistakes = set(cfg.mistake.split("+"))
    bootstrap_net = online if "no_target" in mistakes else target  # MISTAKE when no_target: a moving target
    if "target_grad" in mistakes:
        # MISTAKE: grad enabled, through a copy that requires grad; the graph runs into the target.
        target_value = td_target(bootstrap_net, online, batch, cfg.gamma, cfg.double_dqn)
    else:
        with torch.no_grad():  # PATTERN: the TD target is a constant, with no graph behind it
            target_value = td_target(bootstrap_net, online, batch, cfg.gamma, cfg.double_dqn)
    q = online(batch["obs"]).gather(1, batch["actions"].unsqueeze(1)).squeeze(1)
    loss = F.smooth_l1_loss(q, target_value)  # Huber: robust to the occasional huge TD error
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(online.parameters(), cfg.max_grad_norm)
    optimizer.step()
    return float(loss.detach())


def epsilon(cfg: DqnConfig, env_step: int) -> float:
    frac = min(env_step / cfg.eps_decay_steps, 1.0)
    return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)


@torch.no_grad()
def evaluate(online: nn.Module, env: gym.Env, episodes: int, seed: int, device: torch.device) -> list[float]:
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        total, done = 0.0, False
        while not done:
            action = int(online(torch.as_tensor(obs, dtype=torch.float32, device=device)).argmax())
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


def save_learning_curve(evals: list[dict], threshold: float | None, path, title: str) -> None:
    plt = plots.pyplot()
    steps = [e["env_steps"] for e in evals]
    mean = np.array([e["eval_return_mean"] for e in evals])
    std = np.array([e["eval_return_std"] for e in evals])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, mean, marker="o", ms=3, label="greedy eval return")
    ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    if threshold is not None:
        ax.axhline(threshold, color="gray", ls="--", lw=1, label=f"solved ({threshold:g})")
    ax.set(xlabel="env steps", ylabel="return", title=title)
    ax.legend(fontsize=8)
    plots.save(fig, path)


# --- training loop ------------------------------------------------------------------------------

def train(cfg) -> dict:
    cfg: DqnConfig = to_schema(cfg)
    validate(cfg)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed, cfg.deterministic)
    envs, eval_env = make_envs(cfg)
    threshold = cfg.env.reward_threshold
    if threshold is None and eval_env.spec is not None:
        threshold = eval_env.spec.reward_threshold
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    n_actions = int(envs.single_action_space.n)
    online = q_network(obs_dim, n_actions, cfg.hidden).to(device)
    target = make_target(online)
    if "target_grad" in cfg.mistake:
        target.requires_grad_(True)  # MISTAKE: a target copy that requires grad
    optimizer = torch.optim.Adam(online.parameters(), lr=cfg.lr)  # PATTERN: online params only
    buffer = ReplayBuffer(cfg.buffer_size, obs_dim, device)
    sample_rng = torch.Generator().manual_seed(cfg.seed)
    act_rng = np.random.default_rng(cfg.seed)

    run = Run(resolve_out_dir(cfg.out_dir, "dqn"), config=cfg, tensorboard=cfg.tensorboard)
    env_steps, updates, update_credit, evals, first_solved = 0, 0, 0.0, [], None
    if cfg.resume:
        state = load_checkpoint(run.checkpoint_dir / "last.pt", map_location=device)
        online.load_state_dict(state["online"]), target.load_state_dict(state["target"])
        optimizer.load_state_dict(state["optimizer"]), buffer.load_state_dict(state["buffer"])
        env_steps, updates, update_credit = state["env_steps"], state["updates"], state["update_credit"]
        evals, first_solved = state["evals"], state["first_solved_step"]
        set_rng_state(state["rng"])
        sample_rng.set_state(state["sample_rng"])
        act_rng = np.random.default_rng(cfg.seed + env_steps)  # the episode in flight restarts on resume

    def checkpoint() -> None:
        save_checkpoint(run.checkpoint_dir, {
            "online": online.state_dict(), "target": target.state_dict(), "optimizer": optimizer.state_dict(),
            "buffer": buffer.state_dict(), "env_steps": env_steps, "updates": updates,
            "update_credit": update_credit, "epsilon": epsilon(cfg, env_steps), "evals": evals,
            "first_solved_step": first_solved, "rng": rng_state(), "sample_rng": sample_rng.get_state()})

    obs, _ = envs.reset(seed=cfg.seed + env_steps)
    target_grad_seen, loss, saved_bytes, recent_returns = False, float("nan"), None, []
    next_eval = (env_steps // cfg.eval_every + 1) * cfg.eval_every
    next_log = (env_steps // cfg.log_every + 1) * cfg.log_every
    next_ckpt = (env_steps // cfg.ckpt_every + 1) * cfg.ckpt_every if cfg.ckpt_every else None
    next_sync = (env_steps // cfg.target_sync_every + 1) * cfg.target_sync_every
    bar = progress(cfg.steps, f"dqn {cfg.env.id} mistake={cfg.mistake}", cfg.progress, initial=env_steps)
    t_start, steps_at_start, eval_seconds = time.perf_counter(), env_steps, 0.0
    try:
        while env_steps < cfg.steps:
            eps = epsilon(cfg, env_steps)
            with torch.no_grad():
                greedy = online(torch.as_tensor(obs, dtype=torch.float32, device=device)).argmax(1).cpu().numpy()
            explore = act_rng.random(cfg.env.num_envs) < eps
            actions = np.where(explore, act_rng.integers(n_actions, size=cfg.env.num_envs), greedy)
            next_obs, real_next, rewards, terminated, info = env_step(envs, actions)
            buffer.add(obs, actions, rewards, real_next, terminated)  # truncation is not stored: it bootstraps
            if "_episode" in info:
                recent_returns += info["episode"]["r"][info["_episode"]].tolist()
            obs = next_obs
            env_steps += cfg.env.num_envs
            bar.update(cfg.env.num_envs)

            if env_steps >= cfg.learning_starts:
                update_credit += cfg.updates_per_step * cfg.env.num_envs
                while update_credit >= 1:
                    update_credit -= 1
                    batch = buffer.sample(cfg.batch_size, sample_rng)
                    if updates % 200 == 0:  # bytes saved for backward, on a sample of updates
                        with SavedTensorMeter() as meter:
                            loss = update(online, target, optimizer, batch, cfg)
                        saved_bytes = meter.total
                    else:
                        loss = update(online, target, optimizer, batch, cfg)
                    updates += 1
                    target_grad_seen |= any(p.grad is not None for p in target.parameters())
                    if cfg.tau < 1.0:
                        sync_target(target, online, cfg.tau)
            if cfg.tau >= 1.0 and env_steps >= next_sync:
                sync_target(target, online, 1.0)
                next_sync += cfg.target_sync_every

            if env_steps >= next_log:
                next_log += cfg.log_every
                run.log(env_steps, loss=loss, epsilon=eps, updates=updates, saved_bytes_per_update=saved_bytes,
                        train_return_mean=float(np.mean(recent_returns)) if recent_returns else None)
                recent_returns = []
            if env_steps >= next_eval or env_steps >= cfg.steps:
                next_eval += cfg.eval_every
                t_eval = time.perf_counter()
                returns = evaluate(online, eval_env, cfg.eval_episodes, cfg.seed + 10_000, device)
                eval_seconds += time.perf_counter() - t_eval
                evals.append({"env_steps": env_steps, "eval_return_mean": float(np.mean(returns)),
                              "eval_return_std": float(np.std(returns))})
                run.log(env_steps, **evals[-1])
                bar.set_postfix(ret=f"{evals[-1]['eval_return_mean']:.0f}")
                if first_solved is None and threshold is not None and evals[-1]["eval_return_mean"] >= threshold:
                    first_solved = env_steps
                    if cfg.stop_when_solved:
                        break
            if next_ckpt is not None and env_steps >= next_ckpt:
                next_ckpt += cfg.ckpt_every
                checkpoint()
        elapsed = time.perf_counter() - t_start - eval_seconds  # training only: evaluation is separate
        checkpoint()
    finally:
        bar.close()
        envs.close()
        eval_env.close()
        run.close()
    if evals:
        save_learning_curve(evals, threshold, run.path("learning_curve.png"), f"{cfg.env.id}, mistake={cfg.mistake}")
    final = evals[-1] if evals else {"eval_return_mean": None, "eval_return_std": None}
    summary = {
        "example": "dqn", "env_id": cfg.env.id, "mistake": cfg.mistake, "seed": cfg.seed, "device": str(device),
        "eval_return_mean": final["eval_return_mean"], "eval_return_std": final["eval_return_std"],
        "env_steps": env_steps, "updates": updates, "first_solved_step": first_solved,
        "reward_threshold": threshold, "target_grad_seen": target_grad_seen,
        "env_steps_per_sec": (env_steps - steps_at_start) / max(elapsed, 1e-9),
        "saved_bytes_per_update": saved_bytes, "evals": evals,
    }
    return run.write_summary(summary)


@hydra.main(version_base="1.3", config_path="../configs", config_name="dqn")
def main(cfg) -> None:
    summary = run_cli(train, cfg)
    keys = ("eval_return_mean", "first_solved_step", "env_steps", "target_grad_seen", "env_steps_per_sec")
    print(" ".join(f"{k}={summary[k]}" for k in keys))


if __name__ == "__main__":
    print_help_if_asked(EXAMPLE)
    main()
