"""`scripts/bench.py ppo` and `sac`: where a run's time goes, and each mistake's bytes per
update."""

from __future__ import annotations

import tempfile
import time

import torch

from gallery.core.config import to_schema
from gallery.core.probes import SavedTensorMeter
from scripts.measure.timing import config


def bench_ppo(device: torch.device) -> list[dict]:
    """Env steps per second: the bare vector env (random actions), the pattern's rollout alone (one
    no_grad forward per step), and the whole gallery.ppo train() call (rollouts and 20 epochs of
    updates per rollout); and the bytes saved for backward by one rollout and one update, pattern
    against each mistake."""
    import numpy as np

    from gallery import ppo
    from gallery.core.probes import graph_saved_bytes
    from gallery.data.envs import make_envs

    torch.set_num_threads(1)  # as threads=auto gives these small nets in gallery.ppo
    cfg = to_schema(config("ppo", f"device={device}"))
    envs, eval_env = make_envs(cfg.env, "PPO", 1)
    n, steps = cfg.env.num_envs, 20_480
    rng = np.random.default_rng(0)
    envs.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(steps // n):
        envs.step(rng.integers(2, size=n))
    bare = steps / (time.perf_counter() - t0)
    torch.manual_seed(0)
    agent = ppo.Agent(4, 2, cfg.hidden).to(device)
    obs = torch.as_tensor(envs.reset(seed=0)[0], dtype=torch.float32, device=device)
    t0 = time.perf_counter()
    for _ in range(steps // (n * cfg.rollout_steps)):
        batch, obs = ppo.rollout(agent, envs, obs, cfg.rollout_steps, cfg.gamma)
    rollout_only = steps / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        whole = ppo.train(config("ppo", f"device={device}", f"steps={steps}",
                                 "stop_when_solved=false", "eval_every=1000000",
                                 "value_check_episodes=0", "progress=false",
                                 f"out_dir={tmp}/ppo"))["env_steps_per_sec"]
    rows = [{"setting": f"CartPole-v1, env.num_envs={n}, rollout_steps={cfg.rollout_steps}, "
                        f"epochs={cfg.epochs}",
             "bare_env_steps_per_sec": bare, "rollout_only_env_steps_per_sec": rollout_only,
             "rollout_fraction_of_bare": rollout_only / bare,
             "gallery_train_env_steps_per_sec": whole, "train_fraction_of_bare": whole / bare}]
    saved = {}
    for mistake, (rollout_fn, update_fn) in ppo.BY_MISTAKE.items():
        torch.manual_seed(0)
        agent = ppo.Agent(4, 2, cfg.hidden).to(device)
        obs = torch.as_tensor(envs.reset(seed=0)[0], dtype=torch.float32, device=device)
        batch, obs = rollout_fn(agent, envs, obs, cfg.rollout_steps, cfg.gamma)
        held = graph_saved_bytes(batch["logprobs"], batch["values"])
        advantages, returns = ppo.gae(batch, agent.value(obs), cfg.gamma, cfg.gae_lambda)
        optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.lr)
        try:
            with SavedTensorMeter() as meter:
                update_fn(agent, optimizer, batch, advantages, returns, 1, cfg.minibatch_size,
                          cfg.clip)
            per_update: int | str = meter.total
        except RuntimeError as err:
            per_update = f"raises: {str(err).splitlines()[0][:60]}"
        saved[mistake] = {"rollout_holds_bytes": held, "saved_bytes_per_update": per_update}
    envs.close(), eval_env.close()
    rows.append({f"{m}: {k}": v for m, d in saved.items() for k, v in d.items()})
    return rows


def bench_sac(device: torch.device) -> list[dict]:
    """Env steps per second: the bare vector env (random actions) against the whole gallery.sac
    train() call (one update per env step after the random warm-up); and the bytes saved for
    backward by one update (critic step, then actor-and-temperature step), pattern against each
    mistake."""
    import numpy as np

    from gallery import sac
    from gallery.data.envs import make_envs
    from gallery.data.replay import ReplayBuffer

    torch.set_num_threads(1)  # as threads=auto gives these small nets in gallery.sac
    cfg = to_schema(config("sac", f"device={device}"))
    envs, eval_env = make_envs(cfg.env, "SAC", 1, "Box", "Pendulum-v1")
    n, space = cfg.env.num_envs, envs.single_action_space
    obs_dim, act_dim = int(np.prod(envs.single_observation_space.shape)), int(np.prod(space.shape))
    rng, steps = np.random.default_rng(0), 20_000
    obs, _ = envs.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(steps // n):
        envs.step(rng.uniform(space.low, space.high, size=(n, act_dim)).astype(np.float32))
    bare = steps / (time.perf_counter() - t0)
    # random transitions for the byte count
    buffer = ReplayBuffer(cfg.batch_size * 4, obs_dim, device, act_dim)
    for _ in range(buffer.capacity // n):
        actions = rng.uniform(space.low, space.high, size=(n, act_dim)).astype(np.float32)
        next_obs, rewards, terminated, _, _ = envs.step(actions)
        buffer.add(obs, actions, rewards, next_obs, terminated)
        obs = next_obs
    train_steps = 5_000
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        sac.train(config("sac", f"device={device}", f"steps={train_steps}", "eval_every=1000000",
                         "eval_episodes=1", "progress=false", f"out_dir={tmp}/sac"))
        whole = train_steps / (time.perf_counter() - t0)
    rows = [{"setting": f"{cfg.env.id}, env.num_envs={n}, batch_size={cfg.batch_size}, "
                        f"hidden={cfg.hidden}; train() over {train_steps:,} env steps, the first "
                        f"{cfg.learning_starts:,} random, "
                        "then one update per env step",
             "bare_env_steps_per_sec": bare, "gallery_train_env_steps_per_sec": whole,
             "train_fraction_of_bare": whole / bare}]
    saved = {}
    batch = buffer.sample(cfg.batch_size)
    for mistake, (make_targets, make_optimizers, critic_step, actor_step) in sac.BY_MISTAKE.items():
        torch.manual_seed(0)
        actor = sac.Actor(obs_dim, act_dim, cfg.hidden, space.low, space.high).to(device)
        critics = torch.nn.ModuleList([sac.Critic(obs_dim, act_dim,
                                                  cfg.hidden) for _ in range(2)]).to(device)
        temperature = sac.Temperature().to(device)
        targets = make_targets(critics)
        actor_opt, critic_opt, alpha_opt = make_optimizers(actor, critics, temperature, cfg.lr)
        alpha = temperature.log_alpha.exp().detach()
        with SavedTensorMeter() as meter:
            critic_step(critics, targets, actor, critic_opt, batch, alpha, cfg.gamma)
            actor_step(actor, critics, temperature, actor_opt, alpha_opt, batch["obs"],
                       -float(act_dim))
        saved[f"{mistake}: saved_bytes_per_update"] = meter.total
    envs.close(), eval_env.close()
    rows.append({**saved, "target_grad_over_pattern": saved["target_grad: saved_bytes_per_update"]
                 / saved["none: saved_bytes_per_update"]})
    return rows
