"""Minimal loops of the pattern functions with nothing around them (env step, forward, update): how
fast the gallery's code could go at a given config, for the cleanrl and sb3 benches."""

from __future__ import annotations

import importlib
import statistics
import tempfile
import time

import torch

from gallery.core.config import to_schema
from scripts.measure.dqn import minimal_dqn_loop
from scripts.measure.timing import DEFAULT_THREADS, config


def minimal_ppo_loop(cfg, device: torch.device) -> float:
    """The limit to hold gallery.ppo's loop against: the same env, net and pattern functions
    (rollout, GAE, update), and nothing else: no evaluation, logging, checkpoint or probe. Env
    steps/s."""
    from gallery import ppo
    from gallery.data.envs import make_envs

    envs, eval_envs = make_envs(cfg.env, "PPO", 1)
    agent = ppo.Agent(4, 2, cfg.hidden).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=1e-5, fused=True)
    obs = torch.as_tensor(envs.reset(seed=0)[0], dtype=torch.float32, device=device)
    per_rollout = cfg.rollout_steps * cfg.env.num_envs
    start = time.perf_counter()
    for _ in range(cfg.steps // per_rollout):
        batch, obs = ppo.rollout(agent, envs, obs, cfg.rollout_steps, cfg.gamma)
        with torch.no_grad():
            next_value = agent.value(obs)
        advantages, returns = ppo.gae(batch, next_value, cfg.gamma, cfg.gae_lambda)
        ppo.ppo_update(agent, optimizer, batch, advantages, returns, cfg.epochs, cfg.minibatch_size,
                       cfg.clip, cfg.vf_coef, cfg.ent_coef, cfg.max_grad_norm)
    seconds = time.perf_counter() - start
    envs.close(), eval_envs.close()
    return cfg.steps // per_rollout * per_rollout / seconds


def minimal_a2c_loop(cfg, device: torch.device) -> float:
    """gallery.a2c's loop with nothing around it: the same env, net and pattern functions (rollout,
    the update with GAE inside it), no evaluation, logging, checkpoint or probe. Env steps/s."""
    from gallery import a2c
    from gallery.data.envs import make_envs, space_sizes

    envs, eval_envs = make_envs(cfg.env, "A2C", 1)
    agent = a2c.Agent(*space_sizes(envs), cfg.hidden).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.lr, fused=True)
    obs = torch.as_tensor(envs.reset(seed=0)[0], dtype=torch.float32, device=device)
    per_rollout = cfg.rollout_steps * cfg.env.num_envs
    start = time.perf_counter()
    for _ in range(cfg.steps // per_rollout):
        batch, obs = a2c.rollout(agent, envs, obs, cfg.rollout_steps, cfg.gamma)
        a2c.a2c_update(agent, optimizer, batch, agent.value(obs), cfg.gamma, cfg.gae_lambda,
                       cfg.vf_coef, cfg.ent_coef, cfg.max_grad_norm)
    seconds = time.perf_counter() - start
    envs.close(), eval_envs.close()
    return cfg.steps // per_rollout * per_rollout / seconds


def minimal_sac_loop(cfg, device: torch.device) -> float:
    """gallery.sac's loop with nothing around it: the same env, nets, buffer and pattern functions
    (random actions until learning_starts, then one critic step, one actor-and-temperature step and
    one Polyak average per env step), no evaluation, logging, checkpoint or probe. Env steps/s."""
    import numpy as np

    from gallery import sac
    from gallery.data.envs import env_step, make_envs, space_sizes
    from gallery.data.replay import ReplayBuffer
    from gallery.nets import sync_target

    envs, eval_envs = make_envs(cfg.env, "SAC", 1, "Box")
    (obs_dim, act_dim), space = space_sizes(envs), envs.single_action_space
    actor = sac.Actor(obs_dim, act_dim, cfg.hidden, space.low, space.high).to(device)
    critics = torch.nn.ModuleList([sac.Critic(obs_dim, act_dim, cfg.hidden)
                                   for _ in range(2)]).to(device)
    targets, temperature = sac.make_targets(critics), sac.Temperature().to(device)
    actor_opt, critic_opt, alpha_opt = sac.make_optimizers(actor, critics, temperature, cfg.lr)
    buffer = ReplayBuffer(cfg.buffer_size, obs_dim, device, act_dim, seed=0)
    rng, obs = np.random.default_rng(0), envs.reset(seed=0)[0]
    start = time.perf_counter()
    for step in range(cfg.steps):
        learning = step >= cfg.learning_starts
        actions = actor.act(obs) if learning else \
            rng.uniform(space.low, space.high, size=(1, act_dim)).astype(np.float32)
        next_obs, real_next, rewards, terminated, _ = env_step(envs, actions)
        buffer.add(obs, actions, rewards, real_next, terminated)
        obs = next_obs
        if learning:
            batch, alpha = buffer.sample(cfg.batch_size), temperature.alpha()
            sac.critic_step(critics, targets, actor, critic_opt, batch, alpha, cfg.gamma)
            sac.actor_alpha_step(actor, critics, temperature, actor_opt, alpha_opt, batch["obs"],
                                 -float(act_dim))
            sync_target(targets, critics, cfg.tau)
    seconds = time.perf_counter() - start
    envs.close(), eval_envs.close()
    return cfg.steps / seconds


MINIMAL_LOOPS = {"dqn": minimal_dqn_loop, "ppo": minimal_ppo_loop, "a2c": minimal_a2c_loop,
                 "sac": minimal_sac_loop}


def in_process_loops(name: str, overrides: list[str], device: torch.device,
                     rounds: int = 2) -> dict[str, float]:
    """Env steps/s of the gallery's train() (the whole call) and of the minimal loop of the same
    pattern functions, at the same settings, in this process on the threads train() chose
    (threads=auto), `rounds` rounds in turn, medians."""
    module = importlib.import_module(f"gallery.{name}")
    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())  # the first optimizer imports dynamo
    import matplotlib.pyplot  # noqa: F401 - the first figure's import is not the loop's cost
    rates: dict[str, list[float]] = {"gallery": [], "minimal": []}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            summary = module.train(config(name, f"device={device}", *overrides, "progress=false",
                                          f"out_dir={tmp}/run"))
            rates["gallery"].append(summary["env_steps"] / (time.perf_counter() - start))
        # the minimal loop on the threads train() chose (threads=auto)
        rates["minimal"].append(MINIMAL_LOOPS[name](
            to_schema(config(name, f"device={device}", *overrides)), device))
    torch.set_num_threads(DEFAULT_THREADS)
    return {side: statistics.median(values) for side, values in rates.items()}
