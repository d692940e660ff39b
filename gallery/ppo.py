"""PPO: the rollout is data. What the policy did, and what it was worth, are constants in the
update.

    with torch.no_grad():                                    # acting builds no graph
        action, logprob, value = agent.act(obs)              # stored as plain tensors
    reward += gamma * V(final obs)  (truncated episodes)     # a time limit is not an end
    advantages, returns = gae(batch, V(next obs), ...)       # under no_grad, from the stored values
    ratio = (new_logprob - stored_logprob).exp()             # the stored log-prob is a constant

The mistakes (`mistake=`), and what they cost:

- rollout_grad: acting with grad: every stored log-prob and value drags its graph along, so the
  bytes held for backward grow with every rollout step, and the second backward over the rollout
  raises "Trying to backward through the graph a second time".
- advantage_grad: advantages recomputed from the critic with grad (returns - V(s)): the policy loss
  reaches the critic, so the policy objective pushes the value function around.
- truncation_as_terminal: a time-limit truncation treated as a terminal state (no bootstrap): the
  critic learns that values fall off near the limit, which it cannot see, and underestimates them
  (measured against Monte-Carlo returns).

Run: python -m gallery.ppo seed=0 out_dir=/tmp/ppo          (env.id=<any discrete Gymnasium id>)
"""

from __future__ import annotations

import contextlib
import math
from collections import namedtuple
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from gallery.core.cli import command_line
from gallery.core.config import (
    BaseConfig,
    register_schema,
    require_choice,
    require_non_negative,
    require_positive,
    require_range,
    validate_base,
)
from gallery.core.device import compile_modules, fused
from gallery.core.errors import ConfigError
from gallery.core.loop import Loop, rl_results
from gallery.core.plots import draw_learning_curves
from gallery.core.probes import Probe, graph_saved_bytes
from gallery.core.registry import (
    Cost,
    Criterion,
    Example,
    Gate,
    Measured,
    Mistake,
    Panel,
    Runs,
    avg,
    bench_row,
    each,
    span,
)
from gallery.core.setup import prepare
from gallery.data.envs import (
    EnvConfig,
    evaluate,
    greedy,
    make_envs,
    outcome,
    reward_threshold,
    space_sizes,
    value_bias,
)
from gallery.nets import hookless

# --- config schema -----------------------------------------------------------------------------

@register_schema("ppo")
@dataclass
class PpoConfig(BaseConfig):
    env: EnvConfig = field(default_factory=EnvConfig)
    steps: int = 100_000  # env steps, summed over the vector envs
    stop_when_solved: bool = True
    rollout_steps: int = 32  # steps of every sub-env per rollout
    epochs: int = 20  # passes over each rollout
    minibatch_size: int = 256
    lr: float = 1e-3  # decays linearly to 0
    clip: float = 0.2  # decays linearly to 0
    gamma: float = 0.98
    gae_lambda: float = 0.8
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    hidden: int = 64
    value_check_episodes: int = 5  # episodes for the value estimates against Monte-Carlo returns
    eval_every: int = 10_000
    eval_episodes: int = 10
    log_every: int = 2_560
    ckpt_every: int = 10_240



def validate(cfg: PpoConfig) -> None:
    validate_base(cfg, BY_MISTAKE)
    require_choice(cfg, "env.vectorization", ["sync", "async"])
    require_positive(cfg, "env.num_envs", "rollout_steps", "epochs", "minibatch_size", "lr",
                     "hidden", "eval_episodes", "max_grad_norm")
    require_non_negative(cfg, "vf_coef", "ent_coef", "value_check_episodes")
    require_range(cfg, "gamma", 0.0, 1.0)
    require_range(cfg, "gae_lambda", 0.0, 1.0)
    require_range(cfg, "clip", 0.0, 1.0)
    if cfg.minibatch_size > cfg.rollout_steps * cfg.env.num_envs:
        holds = cfg.rollout_steps * cfg.env.num_envs
        raise ConfigError(f"minibatch_size={cfg.minibatch_size} is more than a rollout holds "
                          f"(rollout_steps * env.num_envs = {holds})")


# --- model ---------------------------------------------------------------------------------------

def layer(n_in: int, n_out: int, gain: float) -> nn.Linear:
    """Orthogonal weights and zero biases: a small last layer starts the policy near uniform."""
    linear = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(linear.weight, gain)
    nn.init.zeros_(linear.bias)
    return linear


class Agent(nn.Module):
    """Separate actor (logits) and critic (state value) MLPs."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int):
        super().__init__()
        g = math.sqrt(2)
        self.actor = nn.Sequential(layer(obs_dim, hidden, g), nn.Tanh(),
                                   layer(hidden, hidden, g), nn.Tanh(),
                                   layer(hidden, n_actions, 0.01))
        self.critic = nn.Sequential(layer(obs_dim, hidden, g), nn.Tanh(),
                                    layer(hidden, hidden, g), nn.Tanh(), layer(hidden, 1, 1.0))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def policy(self, obs: torch.Tensor) -> torch.distributions.Categorical:
        # validate_args=False: the logits come from the net; checking them costs more than the step
        return torch.distributions.Categorical(logits=self.actor(obs), validate_args=False)

    def act(self, obs: torch.Tensor):
        dist = self.policy(obs)
        action = dist.sample()
        return action, dist.log_prob(action), self.value(obs)

    def evaluate(self, obs: torch.Tensor, actions: torch.Tensor):
        dist = self.policy(obs)
        return dist.log_prob(actions), dist.entropy(), self.value(obs)


# --- the pattern --------------------------------------------------------------------------------

def rollout(agent, envs, obs, num_steps, gamma):
    """`num_steps` steps of every sub-env (SAME_STEP autoreset): the rollout as (T, N) tensors
    (rewards and dones converted once, at the end), and the observation to go on from."""
    steps, rewards, dones = [], [], []
    for _ in range(num_steps):
        with torch.no_grad():  # PATTERN: the rollout is data: no graph behind what it stores
            action, logprob, value = agent.act(obs)
        next_obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
        # (written out here, not through envs.env_step: what changes is the reward, not the obs)
        for i in (truncated & ~terminated).nonzero()[0]:  # PATTERN: a time limit is not an end:
            with torch.no_grad():  # bootstrap from the value of the true final observation
                final = torch.as_tensor(info["final_obs"][i], dtype=torch.float32,
                                        device=obs.device)
                reward[i] += gamma * agent.value(final).item()
        steps.append((obs, action, logprob, value))
        rewards.append(reward)
        dones.append(terminated | truncated)
        obs = torch.as_tensor(next_obs, dtype=torch.float32, device=obs.device)
    names = ("obs", "actions", "logprobs", "values")
    batch = {name: torch.stack(column) for name, column in zip(names, zip(*steps))}
    batch["rewards"] = torch.as_tensor(np.stack(rewards), dtype=torch.float32, device=obs.device)
    batch["dones"] = torch.as_tensor(np.stack(dones), dtype=torch.float32, device=obs.device)
    return batch, obs


@torch.no_grad()  # PATTERN: advantages and returns are targets: constants, like the rollout
def gae(batch, next_value, gamma, lam):
    """Generalised advantage estimates from the stored values; returns = advantages + values."""
    advantages, running = torch.zeros_like(batch["rewards"]), torch.zeros_like(next_value)
    for t in reversed(range(len(advantages))):
        not_done = 1.0 - batch["dones"][t]
        delta = batch["rewards"][t] + gamma * next_value * not_done - batch["values"][t]
        running = delta + gamma * lam * not_done * running
        advantages[t], next_value = running, batch["values"][t]
    return advantages, advantages + batch["values"]


def ppo_loss(agent, obs, actions, old_logprobs, advantages, returns, clip):
    """The clipped surrogate, the value loss and the entropy for one minibatch."""
    logprob, entropy, value = agent.evaluate(obs, actions)
    # a minibatch of one has no spread (its std is NaN): its advantage normalises to 0
    advantages = (advantages - advantages.mean()) / (advantages.std().nan_to_num() + 1e-8)
    ratio = (logprob - old_logprobs).exp()  # PATTERN: the stored log-probs are constants
    clipped = ratio.clamp(1 - clip, 1 + clip)
    policy_loss = -torch.min(ratio * advantages, clipped * advantages).mean()
    value_loss = 0.5 * (value - returns).pow(2).mean()
    return policy_loss, value_loss, entropy.mean()


def ppo_update(agent, optimizer, batch, advantages, returns, epochs, minibatch_size, clip,
               vf_coef=0.5, ent_coef=0.0, max_grad_norm=0.5):
    """`epochs` passes of shuffled minibatches over one rollout, flattened from (T, N); the mean
    losses."""
    obs, actions = batch["obs"].flatten(0, 1), batch["actions"].flatten()
    old_logprobs = batch["logprobs"].flatten()
    advantages, returns = advantages.flatten(), returns.flatten()
    losses = []  # the policy and value losses of every minibatch
    for _ in range(epochs):
        for mb in torch.randperm(len(returns), device=returns.device).split(minibatch_size):
            mb_advantages = advantages[mb]
            policy_loss, value_loss, entropy = ppo_loss(agent, obs[mb], actions[mb],
                                                        old_logprobs[mb], mb_advantages,
                                                        returns[mb], clip)
            loss = policy_loss + vf_coef * value_loss - ent_coef * entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
            optimizer.step()
            losses.append(torch.stack([policy_loss.detach(), value_loss.detach()]))
    return tuple(torch.stack(losses).mean(0))  # means: a NaN in any minibatch stays a NaN


# --- the mistakes -------------------------------------------------------------------------------

def rollout_grad(agent, envs, obs, num_steps, gamma):
    steps, rewards, dones = [], [], []
    for _ in range(num_steps):
        action, logprob, value = agent.act(obs)  # MISTAKE: acting with grad: graphs are stored
        next_obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
        for i in (truncated & ~terminated).nonzero()[0]:
            with torch.no_grad():
                final = torch.as_tensor(info["final_obs"][i], dtype=torch.float32,
                                        device=obs.device)
                reward[i] += gamma * agent.value(final).item()
        steps.append((obs, action, logprob, value))
        rewards.append(reward)
        dones.append(terminated | truncated)
        obs = torch.as_tensor(next_obs, dtype=torch.float32, device=obs.device)
    names = ("obs", "actions", "logprobs", "values")
    batch = {name: torch.stack(column) for name, column in zip(names, zip(*steps))}
    batch["rewards"] = torch.as_tensor(np.stack(rewards), dtype=torch.float32, device=obs.device)
    batch["dones"] = torch.as_tensor(np.stack(dones), dtype=torch.float32, device=obs.device)
    return batch, obs


def rollout_truncation_as_terminal(agent, envs, obs, num_steps, gamma):
    steps, rewards, dones = [], [], []
    for _ in range(num_steps):
        with torch.no_grad():
            action, logprob, value = agent.act(obs)
        next_obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
        # MISTAKE: no bootstrap: a time limit ends the episode
        steps.append((obs, action, logprob, value))
        rewards.append(reward)
        dones.append(terminated | truncated)
        obs = torch.as_tensor(next_obs, dtype=torch.float32, device=obs.device)
    names = ("obs", "actions", "logprobs", "values")
    batch = {name: torch.stack(column) for name, column in zip(names, zip(*steps))}
    batch["rewards"] = torch.as_tensor(np.stack(rewards), dtype=torch.float32, device=obs.device)
    batch["dones"] = torch.as_tensor(np.stack(dones), dtype=torch.float32, device=obs.device)
    return batch, obs


def ppo_update_advantage_grad(agent, optimizer, batch, advantages, returns, epochs, minibatch_size,
                              clip, vf_coef=0.5, ent_coef=0.0, max_grad_norm=0.5):
    obs, actions = batch["obs"].flatten(0, 1), batch["actions"].flatten()
    old_logprobs = batch["logprobs"].flatten()
    advantages, returns = advantages.flatten(), returns.flatten()
    losses = []  # the policy and value losses of every minibatch
    for _ in range(epochs):
        for mb in torch.randperm(len(returns), device=returns.device).split(minibatch_size):
            mb_advantages = returns[mb] - agent.value(obs[mb])  # MISTAKE: "fresher", with grad
            policy_loss, value_loss, entropy = ppo_loss(agent, obs[mb], actions[mb],
                                                        old_logprobs[mb], mb_advantages,
                                                        returns[mb], clip)
            loss = policy_loss + vf_coef * value_loss - ent_coef * entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
            optimizer.step()
            losses.append(torch.stack([policy_loss.detach(), value_loss.detach()]))
    return tuple(torch.stack(losses).mean(0))  # means: a NaN in any minibatch stays a NaN


# the functions of a step that a mistake can swap, by name
PpoSteps = namedtuple("PpoSteps", ["rollout", "update"])
BY_MISTAKE = {"none": PpoSteps(rollout, ppo_update),
              "rollout_grad": PpoSteps(rollout_grad, ppo_update),
              "advantage_grad": PpoSteps(rollout, ppo_update_advantage_grad),
              "truncation_as_terminal": PpoSteps(rollout_truncation_as_terminal, ppo_update)}
KNOWN_ERRORS = {
    "rollout_grad": (
        "backward through the graph a second time",
        "mistake=rollout_grad: the rollout was collected with grad, so every stored log-prob "
        "carries the graph of the step that made it; the first minibatch's backward ran into that "
        "graph and freed it, and the second one found it gone. Fix: act under torch.no_grad() (the "
        "rollout is data).",
    ),
}


# --- measurement (off the training path) ----------------------------------------------------------

# --- training loop ------------------------------------------------------------------------------

def train(cfg) -> dict:
    cfg, device = prepare(cfg, validate, single_thread=lambda c: True)
    envs, eval_envs = make_envs(cfg.env, "PPO", cfg.eval_episodes,
                                instead="CartPole-v1, Acrobot-v1; for Box actions, sac")
    threshold, (obs_dim, n_actions) = reward_threshold(cfg.env, envs), space_sizes(envs)
    time_limit = cfg.env.max_episode_steps or envs.spec.max_episode_steps
    variant = BY_MISTAKE[cfg.mistake]
    agent = hookless(Agent(obs_dim, n_actions, cfg.hidden)).to(device)  # same net, faster
    compile_modules(cfg.compile, agent.actor, agent.critic, device=device)  # what Agent calls
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=1e-5, fused=fused(device))
    per_rollout = cfg.rollout_steps * cfg.env.num_envs
    n_rollouts = math.ceil(cfg.steps / per_rollout)
    anneal = lambda rollouts_done: 1 - rollouts_done / n_rollouts  # noqa: E731 - lr and clip to 0
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, anneal)
    stateful = {"agent": agent, "optimizer": optimizer, "schedule": schedule}
    probe, rollout_bytes = Probe(device), None
    # a resumed run starts a fresh rollout: the one in flight is not saved
    with contextlib.closing(envs), contextlib.closing(eval_envs), \
            Loop(cfg, EXAMPLE.name, stateful, device, cfg.env.id, by=per_rollout, unit="env_steps",
                 known_errors=KNOWN_ERRORS) as loop:
        if loop.finished_summary:
            return loop.finished_summary
        obs, _ = envs.reset(seed=cfg.seed + loop.step)
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        for start in loop:
            clip = cfg.clip * anneal(start // per_rollout)
            with probe.step(sampled=False, units=per_rollout):
                batch, obs = variant.rollout(agent, envs, obs, cfg.rollout_steps, cfg.gamma)
                if rollout_bytes is None:  # what the stored rollout holds for backward (0: data)
                    rollout_bytes = graph_saved_bytes(batch["logprobs"], batch["values"])
                with torch.no_grad():
                    next_value = agent.value(obs)
                advantages, returns = gae(batch, next_value, cfg.gamma, cfg.gae_lambda)
                policy_loss, value_loss = variant.update(
                    agent, optimizer, batch, advantages, returns, cfg.epochs, cfg.minibatch_size,
                    clip, cfg.vf_coef, cfg.ent_coef, cfg.max_grad_norm)
                schedule.step()
            if loop.due(cfg.log_every):
                loop.log(losses={"policy_loss": policy_loss, "value_loss": value_loss}, clip=clip,
                         lr=schedule.get_last_lr()[0])
            if loop.due(cfg.eval_every, final=True):
                result = evaluate(greedy(agent.actor), eval_envs, cfg.seed + 10_000, device)
                loop.evaluated(**result)
                if loop.solved(result["eval_return_mean"], threshold):
                    break
        bias = value_bias(lambda o: agent.act(o)[0], agent.value, cfg.env.id, time_limit,
                          cfg.value_check_episodes, cfg.gamma, cfg.seed + 20_000, device)
        return loop.summary(**rl_results(loop, threshold), time_limit=time_limit, **bias,
                            rollout_saved_bytes=rollout_bytes,
                            env_steps_per_sec=probe.units_per_sec)


# --- what the tour and `python -m gallery show ppo` read ------------------------------------

def headline(s: dict) -> str:
    return (f"{outcome(s)}, bytes the stored rollout holds for backward "
            f"{s['rollout_saved_bytes']:,}")


def tour_figure(runs: dict, fig) -> None:
    draw_learning_curves(fig, runs, BY_MISTAKE)


def measured(gate: dict, bench: dict) -> Measured:
    runs, row = gate["runs"], bench_row(bench, "ppo", "none: saved_bytes_per_update")
    solved = [r["first_solved_step"] for r in runs["none"] if r["first_solved_step"] is not None]
    bias = avg(runs["none time_limit=100"], "value_bias")
    truncated = avg(runs["truncation_as_terminal time_limit=100"], "value_bias")
    return Measured(
        (f"CartPole solved by {span(solved)} env steps, value bias {bias:+.1f}",
         f"truncation_as_terminal: value bias {truncated:+.1f}"),
        Panel("value bias, 100-step time limit", bias, truncated, "truncation_as_terminal",
              better="nearer 0"),
        Cost("advantage_grad", avg(runs["none"], "env_steps_per_sec")
             / avg(runs["advantage_grad"], "env_steps_per_sec"),
             row["advantage_grad: saved_bytes_per_update"] / row["none: saved_bytes_per_update"],
             "time: scripts/gates.py ppo, seeds 0-4, 100k env steps each; bytes: "
             "scripts/bench.py ppo"))


FULL_RUN = ("stop_when_solved=false", "eval_every=5000")


QUICK = ["steps=4096", "eval_every=2048", "eval_episodes=2", "value_check_episodes=1", "epochs=2"]
TIME_LIMIT_100 = ["env.max_episode_steps=100", "stop_when_solved=false", "steps=30000"]
EXAMPLE = Example(
    name="ppo",
    pattern="the rollout and the advantages are data: acting and GAE under no_grad, stored "
            "log-probs constant",
    pattern_functions=("rollout", "gae", "ppo_loss", "ppo_update"),
    mistakes={
        "rollout_grad": Mistake(
            "the rollout collected with grad enabled",
            "bytes held for backward grow with every rollout step; the second backward over the "
            "rollout raises 'Trying to backward through the graph a second time'",
            ("rollout_grad",),
            caught="constant: logprobs (grad_fn=",
        ),
        "advantage_grad": Mistake(
            "advantages recomputed from the critic with grad (returns - V(s))",
            "the policy loss reaches the critic's parameters: the policy objective pushes the "
            "value function",
            ("ppo_update_advantage_grad",),
            caught="constant: advantages[0] (grad_fn=",
        ),
        "truncation_as_terminal": Mistake(
            "a time-limit truncation treated as a terminal state (no bootstrap)",
            "the critic underestimates values against Monte-Carlo returns (measured with a "
            "100-step limit)",
            ("rollout_truncation_as_terminal",),
            no_check=("a wrong value in a constant (no bootstrap at a time "
                      "limit), not a graph: the value-bias measure in the tests catches it"),
            needs="episodes that reach a time limit: a 100-step limit and a long run (the full "
                  "tour, budget=full)",
        ),
    },
    budgets={"full": {**{m: [] for m in BY_MISTAKE}, "truncation_as_terminal": TIME_LIMIT_100},
             "quick": {m: QUICK for m in BY_MISTAKE}},
    headline=headline,
    figure=tour_figure,
    check=lambda s: None if s["rollout_saved_bytes"] == 0 else "the stored rollout holds a graph",
    smoke=("steps=512", "eval_every=512", "eval_episodes=1", "value_check_episodes=1", "epochs=1"),
    report=("eval_return_mean", "first_solved_step", "env_steps", "value_bias",
            "rollout_saved_bytes", "env_steps_per_sec"),
    order=2,
    gate=Gate(
        "CartPole-v1, the default config, seeds 0-4, advantage_grad beside it; and under a "
        "100-step time limit (seeds 0-2), the pattern against truncation_as_terminal",
        runs={"none": Runs(seeds=(0, 1, 2, 3, 4), overrides=FULL_RUN),
              "advantage_grad": Runs("advantage_grad", (0, 1, 2, 3, 4), FULL_RUN),
              "none time_limit=100": Runs(overrides=tuple(TIME_LIMIT_100)),
              "truncation_as_terminal time_limit=100": Runs("truncation_as_terminal",
                                                            overrides=tuple(TIME_LIMIT_100))},
        keys=("first_solved_step", "eval_return_mean", "value_bias", "value_abs_error",
              "env_steps_per_sec"),
        criteria=(
            Criterion("solved (greedy eval mean >= 475) by 100k env steps, ending at >= 475",
                      ("none",), each(lambda r: r["first_solved_step"] is not None
                                      and r["first_solved_step"] <= 100_000
                                      and r["eval_return_mean"] >= 475)),
            Criterion("under the time limit both reach it, and truncation_as_terminal's critic "
                      "underestimates Monte-Carlo returns by > 10, 10 more than the pattern's",
                      ("none time_limit=100", "truncation_as_terminal time_limit=100"), each(
                          lambda p, m: m["value_bias"] < min(-10, p["value_bias"] - 10)
                          and p["eval_return_mean"] == m["eval_return_mean"] == 100)),
            Criterion("each solving run under 2 minutes", ("none",),
                      each(lambda r: r["wall_seconds"] < 120), timed=True)),
        figure_runs=("none", "advantage_grad"),
        figure_title="ppo on CartPole-v1, default config, seed 0 (greedy eval, 10 episodes)"),
    measured=measured,
    size_keys=("env.num_envs", "rollout_steps", "minibatch_size"),
)


if __name__ == "__main__":
    command_line(EXAMPLE, train)
