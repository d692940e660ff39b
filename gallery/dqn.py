"""DQN: bootstrap from a separate target network, and compute the TD target without a graph.

    with torch.no_grad():                                        # the target is a constant
        next_q = target_net(next_obs).max(1).values              # a frozen copy, synced at times
        target = reward + gamma * (1 - terminated) * next_q      # truncation still bootstraps
    loss = huber(online_net(obs).gather(1, action), target)

The target network has requires_grad_(False), is never given to the optimizer, and syncs by a
hard copy every `target_sync_every` env steps (tau=1) or by a Polyak update every step (tau<1).
The mistakes (`mistake=`), and what they cost:

- no_target: bootstrap from the online network itself: the regression target moves with every
  update.
- target_grad: the target is computed with grad enabled through a copy that requires grad: target
  params accumulate .grad and each update saves more bytes for backward (scripts/bench.py dqn).
- no_target+target_grad: both: the gradient flows through both sides of the TD error (residual
  gradient).

Run: python -m gallery.dqn env.id=CartPole-v1 seed=0 out_dir=/tmp/dqn
"""

from __future__ import annotations

import contextlib
import copy
from collections import namedtuple
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gallery.core.cli import command_line
from gallery.core.config import (
    BaseConfig,
    register_schema,
    require_choice,
    require_positive,
    require_range,
    validate_base,
)
from gallery.core.device import compile_modules, fused
from gallery.core.errors import ConfigError
from gallery.core.loop import Counters, Loop, rl_results
from gallery.core.plots import draw_learning_curves
from gallery.core.probes import Probe, grads_absent
from gallery.core.registry import (
    Cost,
    Criterion,
    Example,
    Gate,
    Measured,
    Mistake,
    Panel,
    Runs,
    bench_row,
    each,
    span,
)
from gallery.core.setup import prepare
from gallery.data.envs import (
    EnvConfig,
    EpisodeReturns,
    env_step,
    evaluate,
    greedy,
    make_envs,
    outcome,
    reward_threshold,
    space_sizes,
)
from gallery.data.replay import ReplayBuffer
from gallery.nets import hookless, sync_target

# --- config schema -----------------------------------------------------------------------------

@register_schema("dqn")
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
    ckpt_every: int = 10_000  # env steps; the replay buffer makes a save about 2 MB
    eval_episodes: int = 10
    log_every: int = 1_000
    probe_every: int = 200  # updates between measures of the bytes an update saves for backward



def validate(cfg: DqnConfig) -> None:
    validate_base(cfg, BY_MISTAKE)
    require_choice(cfg, "env.vectorization", ["sync", "async"])
    require_positive(cfg, "env.num_envs", "hidden", "lr", "batch_size", "buffer_size",
                     "target_sync_every", "eval_episodes", "updates_per_step", "eps_decay_steps",
                     "probe_every")
    require_range(cfg, "gamma", 0.0, 1.0)
    require_range(cfg, "tau", 1e-6, 1.0)
    require_range(cfg, "eps_end", 0.0, 1.0)
    if cfg.batch_size > cfg.buffer_size:
        raise ConfigError(f"batch_size={cfg.batch_size} must be <= buffer_size={cfg.buffer_size}")


# --- model ----------------------------------------------------------------------------------------

def q_network(obs_dim: int, n_actions: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, n_actions))


# --- the pattern --------------------------------------------------------------------------------

def make_target(online):
    """A frozen copy of the online network, to bootstrap from."""
    target = copy.deepcopy(online)
    target.requires_grad_(False)  # PATTERN: a frozen copy; it is never given to the optimizer
    return target


def td_target(bootstrap_net, online, batch, gamma, double=True):
    """r + gamma * (1 - terminated) * Q_boot(s', a'). Only `terminated` stops bootstrapping: a
    time-limit truncation is not a real end, so its next state's value still counts. Every
    tensor in `batch` is (B,) or (B, obs_dim), so nothing broadcasts to (B, B)."""
    next_obs = batch["next_obs"]
    if double:  # Double DQN: the online net picks a', the bootstrap net scores it
        next_action = online(next_obs).argmax(1, keepdim=True)
        next_q = bootstrap_net(next_obs).gather(1, next_action).squeeze(1)
    else:
        next_q = bootstrap_net(next_obs).max(1).values
    return batch["rewards"] + gamma * (1.0 - batch["terminated"]) * next_q


def update(online, target, optimizer, batch, gamma=0.99, double=True, max_grad_norm=10.0):
    """One gradient step on the Huber TD error; the optimizer holds the online net's params only."""
    with torch.no_grad():  # PATTERN: the TD target is a constant, with no graph behind it
        target_value = td_target(target, online, batch, gamma, double)
    q = online(batch["obs"]).gather(1, batch["actions"].unsqueeze(1)).squeeze(1)
    loss = F.smooth_l1_loss(q, target_value)  # Huber: robust to the occasional huge TD error
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(online.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


# --- the mistakes -------------------------------------------------------------------------------

def make_target_with_grad(online):
    target = copy.deepcopy(online)  # MISTAKE: the copy still requires grad
    return target


def update_no_target(online, target, optimizer, batch, gamma=0.99, double=True, max_grad_norm=10.0):
    with torch.no_grad():
        target_value = td_target(online, online, batch, gamma, double)  # MISTAKE: a moving target
    q = online(batch["obs"]).gather(1, batch["actions"].unsqueeze(1)).squeeze(1)
    loss = F.smooth_l1_loss(q, target_value)  # Huber: robust to the occasional huge TD error
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(online.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def update_target_grad(online, target, optimizer, batch, gamma=0.99, double=True,
                       max_grad_norm=10.0):
    target_value = td_target(target, online, batch, gamma, double)  # MISTAKE: a graph into it
    q = online(batch["obs"]).gather(1, batch["actions"].unsqueeze(1)).squeeze(1)
    loss = F.smooth_l1_loss(q, target_value)  # Huber: robust to the occasional huge TD error
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(online.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def update_no_target_target_grad(online, target, optimizer, batch, gamma=0.99, double=True,
                                 max_grad_norm=10.0):
    target_value = td_target(online, online, batch, gamma, double)  # MISTAKE: online, with grad
    q = online(batch["obs"]).gather(1, batch["actions"].unsqueeze(1)).squeeze(1)
    loss = F.smooth_l1_loss(q, target_value)  # Huber: robust to the occasional huge TD error
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(online.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


# the functions of a step that a mistake can swap, by name
DqnSteps = namedtuple("DqnSteps", ["make_target", "update"])
BY_MISTAKE = {"none": DqnSteps(make_target, update),
              "no_target": DqnSteps(make_target, update_no_target),
              "target_grad": DqnSteps(make_target_with_grad, update_target_grad),
              "no_target+target_grad": DqnSteps(make_target_with_grad,
                                                update_no_target_target_grad)}


def epsilon_greedy(online: nn.Module, obs: np.ndarray, eps: float, rng: np.random.Generator,
                   n_actions: int, device: torch.device) -> np.ndarray:
    """One action per sub-env: random with probability `eps`, else the online net's greedy choice.
    No forward pass when every sub-env explores this step."""
    explore = rng.random(len(obs)) < eps
    if explore.all():
        return rng.integers(n_actions, size=len(obs))
    with torch.no_grad():  # acting needs no graph
        actions = online(torch.from_numpy(obs).to(device)).argmax(1).cpu().numpy()
    if explore.any():
        actions = np.where(explore, rng.integers(n_actions, size=len(obs)), actions)
    return actions


def updates_owed(cfg: DqnConfig, tally: Counters, env_steps: int) -> int:
    """Gradient updates due after `env_steps`: `updates_per_step` each, once learning has started;
    the fraction left over carries to the next step."""
    if env_steps >= cfg.learning_starts:
        tally.update_credit += cfg.updates_per_step * cfg.env.num_envs
    n_updates = int(tally.update_credit)
    tally.update_credit -= n_updates
    return n_updates


def epsilon(cfg: DqnConfig, env_step: int) -> float:
    frac = min(env_step / cfg.eps_decay_steps, 1.0)
    return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)


# --- training loop ------------------------------------------------------------------------------

def train(cfg) -> dict:
    cfg, device = prepare(cfg, validate, single_thread=lambda c: True)
    envs, eval_envs = make_envs(cfg.env, "DQN", cfg.eval_episodes)
    threshold, (obs_dim, n_actions) = reward_threshold(cfg.env, envs), space_sizes(envs)
    n, variant = cfg.env.num_envs, BY_MISTAKE[cfg.mistake]
    online = hookless(q_network(obs_dim, n_actions, cfg.hidden)).to(device)  # same net, faster
    target = variant.make_target(online)
    compile_modules(cfg.compile, online, target, device=device)  # after the copy, each its own call
    # PATTERN: the optimizer holds the online params only
    optimizer = torch.optim.Adam(online.parameters(), lr=cfg.lr, fused=fused(device))
    buffer = ReplayBuffer(cfg.buffer_size, obs_dim, device, seed=cfg.seed)
    tally = Counters(updates=0, update_credit=0.0)  # update_credit: updates owed, a fraction
    stateful = {"online": online, "target": target, "optimizer": optimizer, "buffer": buffer,
                "tally": tally}
    probe, loss, returns = Probe(device, "saved_bytes_per_update"), None, EpisodeReturns(n)
    with contextlib.closing(envs), contextlib.closing(eval_envs), \
            Loop(cfg, EXAMPLE.name, stateful, device, cfg.env.id, by=n, unit="env_steps") as loop:
        if loop.finished_summary:
            return loop.finished_summary
        act_rng = np.random.default_rng(cfg.seed + loop.step)  # a resume restarts episodes
        obs, _ = envs.reset(seed=cfg.seed + loop.step)
        for start in loop:
            n_updates = updates_owed(cfg, tally, loop.step)
            with probe.step(probe.crosses(tally.updates, n_updates, cfg.probe_every), units=n,
                            per=n_updates):
                eps = epsilon(cfg, start)
                actions = epsilon_greedy(online, obs, eps, act_rng, n_actions, device)
                next_obs, real_next, rewards, terminated, info = env_step(envs, actions)
                buffer.add(obs, actions, rewards, real_next, terminated)  # truncation bootstraps
                returns.add(rewards, info)
                obs = next_obs
                for _ in range(n_updates):
                    loss = variant.update(online, target, optimizer, buffer.sample(cfg.batch_size),
                                          cfg.gamma, cfg.double_dqn, cfg.max_grad_norm)
                    if cfg.tau < 1.0:
                        sync_target(target, online, cfg.tau)
                tally.updates += n_updates
                if cfg.tau >= 1.0 and loop.due(cfg.target_sync_every):
                    sync_target(target, online, 1.0)
            if loop.due(cfg.log_every):
                loop.log(losses={"loss": loss}, epsilon=eps, updates=tally.updates,
                         train_return_mean=returns.pop_mean(), **probe.record)
            if loop.due(cfg.eval_every, final=True):
                result = evaluate(greedy(online), eval_envs, cfg.seed + 10_000, device)
                loop.evaluated(**result)
                if loop.solved(result["eval_return_mean"], threshold):
                    break
        return loop.summary(**rl_results(loop, threshold), updates=tally.updates, **probe.record,
                            target_grad_seen=not grads_absent(target),
                            env_steps_per_sec=probe.units_per_sec)


# --- what the tour and `python -m gallery show dqn` read ------------------------------------

def headline(s: dict) -> str:
    return (f"{outcome(s)}, target grads seen: "
            f"{s['target_grad_seen']}, saved bytes/update {s['saved_bytes_per_update']:,}")


def tour_figure(runs: dict, fig) -> None:
    ax = draw_learning_curves(fig, runs, ("none", "no_target"), "pattern (target network)")
    if runs.get("none", {}).get("reward_threshold"):
        ax.axhline(runs["none"]["reward_threshold"], color="gray", ls="--", lw=1)


def measured(gate: dict, bench: dict) -> Measured:
    runs, row = gate["runs"], bench_row(bench, "dqn", "bytes_ratio_target_grad_over_pattern")
    solved = [r["first_solved_step"] for r in runs["none"]]
    return Measured(
        (f"CartPole solved by {span(solved)} env steps, {len(solved)} seeds",
         "target_grad: the target gets .grad (a test asserts it)"),
        Panel("bytes saved per update", row["pattern_saved_bytes_per_update"],
              row["target_grad_saved_bytes_per_update"], "target_grad"),
        Cost("target_grad", runs["none 10k"][0]["env_steps_per_sec"]
             / runs["target_grad 10k"][0]["env_steps_per_sec"],
             row["bytes_ratio_target_grad_over_pattern"],
             "time: scripts/gates.py dqn, seed 0, 10k env steps each; bytes: scripts/bench.py dqn"))


QUICK = ["steps=600", "learning_starts=200", "eval_every=300", "eval_episodes=2", "hidden=32"]
EXAMPLE = Example(
    name="dqn",
    pattern="TD target under torch.no_grad() from a frozen target network synced on a schedule",
    pattern_functions=("make_target", "td_target", "sync_target", "update"),
    mistakes={
        "no_target": Mistake(
            "bootstrap from the online network (still under no_grad)",
            "the regression target moves with every update; learning is slower and less stable",
            ("update_no_target",),
            no_check=("bootstraps from the online net under no_grad: the target is a "
                      "constant and nothing frozen moves; which net it came from is a choice, "
                      "not a graph (the learning gate measures the cost)"),
            needs="a run long enough to learn: the full tour (budget=full) or scripts/gates.py "
                  "dqn",
        ),
        "target_grad": Mistake(
            "TD target computed with grad enabled through a target copy that requires grad",
            "target params accumulate .grad; more bytes saved for backward per update",
            ("make_target_with_grad", "update_target_grad"),
            caught="no_grad_reaches: a backward wrote a grad into target",
        ),
        "no_target+target_grad": Mistake(
            "both: bootstrap from the online net with grad enabled",
            "the residual gradient: grad flows through both sides of the TD error, and each update "
            "saves about 3x the bytes for backward (measured)",
            ("update_no_target_target_grad",),
            caught="constant: td_target (grad_fn=",
        ),
    },
    budgets={"full": {"none": ["stop_when_solved=false", "steps=30000"],
                      "no_target": ["stop_when_solved=false", "steps=30000"],
                      "target_grad": ["steps=3000"], "no_target+target_grad": ["steps=3000"]},
             "quick": {m: QUICK for m in BY_MISTAKE}},
    headline=headline,
    figure=tour_figure,
    check=lambda s: "a target parameter got .grad" if s["target_grad_seen"] else (
        None if s["saved_bytes_per_update"] else "no update was measured"),
    smoke=("steps=300", "learning_starts=100", "eval_every=300", "eval_episodes=1", "hidden=16",
           "batch_size=32", "probe_every=10"),
    report=("eval_return_mean", "first_solved_step", "env_steps", "target_grad_seen",
            "env_steps_per_sec"),
    order=1,
    gate=Gate(
        "CartPole-v1, the default config, seeds 0-4; beside it, the pattern and target_grad for "
        "10k env steps on seed 0 (time), and no_target for 20k",
        runs={"none": Runs(seeds=(0, 1, 2, 3, 4)),
              "none 10k": Runs(seeds=(0,), overrides=("stop_when_solved=false", "steps=10000")),
              "target_grad 10k": Runs("target_grad", (0,), ("stop_when_solved=false",
                                                            "steps=10000")),
              "no_target 20k": Runs("no_target", (0,), ("steps=20000",))},
        keys=("first_solved_step", "eval_return_mean", "target_grad_seen", "env_steps_per_sec"),
        criteria=(
            Criterion("solved (greedy eval mean >= 475) within 50k env steps, ending at >= 475, "
                      "with no .grad ever in the target network", ("none",),
                      each(lambda r: r["first_solved_step"] is not None
                           and r["first_solved_step"] <= 50_000 and r["eval_return_mean"] >= 475
                           and not r["target_grad_seen"])),
            Criterion("no_target does not solve within 20k env steps, where the pattern's seed 0 "
                      "does", ("none", "no_target 20k"),
                      each(lambda p, m: p["first_solved_step"] <= 20_000
                           and m["first_solved_step"] is None)),
            Criterion("each run under 90 s", ("none",),
                      each(lambda r: r["wall_seconds"] < 90), timed=True))),
    measured=measured,
)


if __name__ == "__main__":
    command_line(EXAMPLE, train)
