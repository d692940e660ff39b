"""SAC: three stop-gradients in one update, each guarding a different network.

    with torch.no_grad():                              # 1. the soft TD target is a constant
        a2, logp2 = actor.sample(s2)
        y = r + gamma * (1 - done) * (min(Q1'(s2, a2), Q2'(s2, a2)) - alpha * logp2)
    with frozen(critics):                              # 2. the actor's loss flows through the
        q = min(Q1, Q2)(s, a)                          #    critics to the action, not into them
    actor_loss = (alpha * logp - q).mean()
    alpha_loss = -(log_alpha * (logp.detach() + target_entropy)).mean()  # 3. only log_alpha learns

and the target critics follow by Polyak averaging under no_grad (`sync_target`, shared with dqn).
The mistakes (`mistake=`):

- target_grad: the TD target with grad enabled (and target critics that require grad): grads flow
  into the target critics and into the actor through the next-action sample; more bytes saved.
- actor_updates_critic: one optimizer over actor and critics, and the critics not frozen: the
  actor's loss, which maximises Q, also moves the critics.
- alpha_no_detach: the temperature loss without the detach: its gradient reaches the actor.

Run: python -m gallery.sac seed=0 out_dir=/tmp/sac        (env.id=<any Box-action Gymnasium id>)
"""

from __future__ import annotations

import contextlib
import copy
import math
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
from gallery.core.device import compile_modules
from gallery.core.errors import ConfigError
from gallery.core.loop import Counters, Loop, rl_results
from gallery.core.plots import draw_learning_curve
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
    avg,
    bench_row,
    each,
    tour_budgets,
)
from gallery.core.setup import prepare
from gallery.data.envs import (
    EnvConfig,
    env_step,
    evaluate,
    make_envs,
    reward_threshold,
    space_sizes,
)
from gallery.data.replay import ReplayBuffer
from gallery.nets import frozen, sync_target

# --- config schema -----------------------------------------------------------------------------

@register_schema("sac")
@dataclass
class SacConfig(BaseConfig):
    env: EnvConfig = field(default_factory=lambda: EnvConfig(id="Pendulum-v1", num_envs=1))
    steps: int = 20_000  # env steps
    # Pendulum never ends an episode early: the gate reads the return at 20k steps, so stopping at
    # the first evaluation at env.reward_threshold (-200 for Pendulum) is asked for, not the default
    stop_when_solved: bool = False
    hidden: int = 128  # 256 (SB3's) costs 2.4x the time per update on a 2-core CPU
    lr: float = 1e-3
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005  # Polyak rate of the target critics
    buffer_size: int = 100_000
    learning_starts: int = 1_000  # uniform random actions until then
    eval_every: int = 2_000
    eval_episodes: int = 5
    log_every: int = 1_000
    ckpt_every: int = 10_000
    probe_every: int = 500  # updates between measurements of the bytes one update saves



def validate(cfg: SacConfig) -> None:
    validate_base(cfg, BY_MISTAKE)
    require_choice(cfg, "env.vectorization", ["sync", "async"])
    require_positive(cfg, "env.num_envs", "hidden", "lr", "batch_size", "buffer_size",
                     "eval_episodes", "probe_every")
    require_range(cfg, "gamma", 0.0, 1.0)
    require_range(cfg, "tau", 1e-6, 1.0)
    if cfg.batch_size > cfg.buffer_size:
        raise ConfigError(f"batch_size={cfg.batch_size} must be <= buffer_size={cfg.buffer_size}")


# --- models --------------------------------------------------------------------------------------

def mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_out))


class Actor(nn.Module):
    """A tanh-squashed Gaussian policy, scaled to the action bounds."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, low: np.ndarray, high: np.ndarray):
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim, hidden)
        self.register_buffer("scale", torch.as_tensor((high - low) / 2, dtype=torch.float32))
        self.register_buffer("center", torch.as_tensor((high + low) / 2, dtype=torch.float32))

    def sample(self, obs: torch.Tensor):
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        std = log_std.clamp(-5, 2).exp()
        noise = torch.randn_like(mean)
        u = mean + std * noise  # reparameterised: the sample carries the actor's graph
        squashed = torch.tanh(u)
        # log N(u; mean, std), then the change of variables of the tanh and the scale
        gaussian = -0.5 * noise.pow(2) - std.log() - 0.5 * math.log(2 * math.pi)
        logp = gaussian - torch.log(self.scale * (1 - squashed.pow(2)) + 1e-6)
        return squashed * self.scale + self.center, logp.sum(-1)

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs).chunk(2, dim=-1)[0]) * self.scale + self.center

    @torch.no_grad()  # acting needs no graph
    def act(self, obs: np.ndarray) -> np.ndarray:
        """A sampled action for each sub-env's observation, as the env takes it."""
        return self.sample(torch.as_tensor(obs, dtype=torch.float32,
                                           device=self.scale.device))[0].cpu().numpy()


class Critic(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, hidden)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1)).squeeze(-1)


class Temperature(nn.Module):
    """alpha = exp(log_alpha), learned so that the policy's entropy stays near a target."""

    def __init__(self):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.zeros(()))

    def alpha(self) -> torch.Tensor:
        """Today's alpha, a constant: the critic and actor losses weight entropy by it."""
        return self.log_alpha.detach().exp()


# --- the pattern --------------------------------------------------------------------------------

def make_targets(critics):
    target_critics = copy.deepcopy(critics)
    target_critics.requires_grad_(False)  # PATTERN: they only ever follow, by Polyak averaging
    return target_critics


def make_optimizers(actor, critics, temperature, lr):
    """One optimizer per network: each step moves only what it is meant to train. Fused (one kernel
    per step) where the device has it."""
    fast = actor.scale.device.type in ("cpu", "cuda")  # where torch has a fused Adam
    actor_opt = torch.optim.Adam(actor.parameters(), lr=lr, fused=fast)  # PATTERN: the actor only
    return actor_opt, torch.optim.Adam(critics.parameters(), lr=lr, fused=fast), \
        torch.optim.Adam(temperature.parameters(), lr=lr, fused=fast)


def soft_td_target(actor, target_critics, batch, alpha, gamma):
    """r + gamma * (1 - terminated) * (min_i Q'_i(s', a') - alpha * log pi(a'|s')), with a' ~
    pi(.|s')."""
    next_action, next_logp = actor.sample(batch["next_obs"])
    next_q = torch.min(*(q(batch["next_obs"], next_action) for q in target_critics))
    return batch["rewards"] + gamma * (1.0 - batch["terminated"]) * (next_q - alpha * next_logp)


def critic_step(critics, target_critics, actor, critic_opt, batch, alpha, gamma):
    with torch.no_grad():  # PATTERN: a constant: no graph into the targets or the actor
        target = soft_td_target(actor, target_critics, batch, alpha, gamma)
    loss = sum(F.mse_loss(q(batch["obs"], batch["actions"]), target) for q in critics)
    critic_opt.zero_grad(set_to_none=True)
    loss.backward()
    critic_opt.step()
    return loss.detach()


def actor_alpha_step(actor, critics, temperature, actor_opt, alpha_opt, obs, target_entropy):
    """The actor climbs min(Q1, Q2) - alpha * log pi; the temperature follows the entropy target.
    The critics stop requiring grad for their forward here (rather than having their grads cleared
    afterwards): backward then computes no weight grads for them at all, and even an optimizer that
    holds them could not move them."""
    alpha = temperature.log_alpha.exp().detach()
    action, logp = actor.sample(obs)
    with frozen(critics):  # PATTERN: grads flow through the critics to the action, not into them
        q = torch.min(*(c(obs, action) for c in critics))
    actor_loss = (alpha * logp - q).mean()
    # PATTERN: logp is a constant here: only log_alpha learns from this loss
    alpha_loss = -(temperature.log_alpha * (logp.detach() + target_entropy)).mean()
    actor_opt.zero_grad(set_to_none=True)
    alpha_opt.zero_grad(set_to_none=True)
    (actor_loss + alpha_loss).backward()
    actor_opt.step()
    alpha_opt.step()
    return actor_loss.detach(), -logp.detach().mean()


# --- the mistakes -------------------------------------------------------------------------------

def make_targets_with_grad(critics):
    target_critics = copy.deepcopy(critics)  # MISTAKE: the copies still require grad
    return target_critics


def critic_step_target_grad(critics, target_critics, actor, critic_opt, batch, alpha, gamma):
    target = soft_td_target(actor, target_critics, batch, alpha, gamma)  # MISTAKE: a graph behind
    loss = sum(F.mse_loss(q(batch["obs"], batch["actions"]), target) for q in critics)
    critic_opt.zero_grad(set_to_none=True)
    loss.backward()
    critic_opt.step()
    return loss.detach()


def make_optimizers_shared(actor, critics, temperature, lr):
    # MISTAKE: one optimizer for both
    fast = actor.scale.device.type in ("cpu", "cuda")  # where torch has a fused Adam
    actor_opt = torch.optim.Adam([*actor.parameters(), *critics.parameters()], lr=lr, fused=fast)
    return actor_opt, actor_opt, torch.optim.Adam(temperature.parameters(), lr=lr, fused=fast)


def actor_alpha_step_updates_critic(actor, critics, temperature, actor_opt, alpha_opt, obs,
                                    target_entropy):
    alpha = temperature.log_alpha.exp().detach()
    action, logp = actor.sample(obs)
    q = torch.min(*(c(obs, action) for c in critics))  # MISTAKE: the critics get the actor's grads
    actor_loss = (alpha * logp - q).mean()
    alpha_loss = -(temperature.log_alpha * (logp.detach() + target_entropy)).mean()
    actor_opt.zero_grad(set_to_none=True)
    alpha_opt.zero_grad(set_to_none=True)
    (actor_loss + alpha_loss).backward()
    actor_opt.step()
    alpha_opt.step()
    return actor_loss.detach(), -logp.detach().mean()


def actor_alpha_step_alpha_no_detach(actor, critics, temperature, actor_opt, alpha_opt, obs,
                                     target_entropy):
    alpha = temperature.log_alpha.exp().detach()
    action, logp = actor.sample(obs)
    with frozen(critics):
        q = torch.min(*(c(obs, action) for c in critics))
    actor_loss = (alpha * logp - q).mean()
    # MISTAKE: logp keeps its graph: this loss trains the actor too
    alpha_loss = -(temperature.log_alpha * (logp + target_entropy)).mean()
    actor_opt.zero_grad(set_to_none=True)
    alpha_opt.zero_grad(set_to_none=True)
    (actor_loss + alpha_loss).backward()
    actor_opt.step()
    alpha_opt.step()
    return actor_loss.detach(), -logp.detach().mean()


# the step's functions a mistake swaps
SacSteps = namedtuple("SacSteps", ["make_targets", "make_optimizers", "critic_step", "actor_step"])
BY_MISTAKE = {
    "none": SacSteps(make_targets, make_optimizers, critic_step, actor_alpha_step),
    "target_grad": SacSteps(make_targets_with_grad, make_optimizers, critic_step_target_grad,
                           actor_alpha_step),
    "actor_updates_critic": SacSteps(make_targets, make_optimizers_shared, critic_step,
                                  actor_alpha_step_updates_critic),
    "alpha_no_detach": SacSteps(make_targets, make_optimizers, critic_step,
                               actor_alpha_step_alpha_no_detach),
}


# --- training loop ------------------------------------------------------------------------------

def single_thread(cfg: SacConfig) -> bool:
    """For threads=auto: at SB3's 256 units a batch's matmuls are big enough for a second core
    (1.3-1.5x on a 2-core CPU); at the default 128 a second thread gains nothing."""
    return cfg.hidden < 256


def train(cfg) -> dict:
    cfg, device = prepare(cfg, validate, single_thread)
    envs, eval_envs = make_envs(cfg.env, "SAC", cfg.eval_episodes, "Box", "Pendulum-v1, "
                                "MountainCarContinuous-v0; for Discrete actions, dqn or ppo")
    (obs_dim, act_dim), space, n = space_sizes(envs), envs.single_action_space, cfg.env.num_envs
    variant, threshold = BY_MISTAKE[cfg.mistake], reward_threshold(cfg.env, envs)
    actor = Actor(obs_dim, act_dim, cfg.hidden, space.low, space.high).to(device)
    critics = nn.ModuleList([Critic(obs_dim, act_dim, cfg.hidden) for _ in range(2)]).to(device)
    target_critics, temperature = variant.make_targets(critics), Temperature().to(device)
    compile_modules(cfg.compile, actor.net, *critics, *target_critics, device=device)
    actor_opt, critic_opt, alpha_opt = variant.make_optimizers(actor, critics, temperature, cfg.lr)
    buffer = ReplayBuffer(cfg.buffer_size, obs_dim, device, act_dim, seed=cfg.seed)
    stateful = {"actor": actor, "critics": critics, "target_critics": target_critics,
                "temperature": temperature, "actor_opt": actor_opt, "critic_opt": critic_opt,
                "alpha_opt": alpha_opt, "buffer": buffer, "tally": (tally := Counters(updates=0))}
    probe, critic_loss, actor_loss, entropy = Probe(device, "saved_bytes_per_update"), 0.0, 0.0, 0.0
    with contextlib.closing(envs), contextlib.closing(eval_envs), \
            Loop(cfg, EXAMPLE.name, stateful, device, cfg.env.id, by=n, unit="env_steps") as loop:
        if loop.finished_summary:
            return loop.finished_summary
        obs, _ = envs.reset(seed=cfg.seed + loop.step)  # a resume restarts the episodes
        act_rng = np.random.default_rng(cfg.seed + loop.step)  # random actions until learning
        for start in loop:
            learning = start >= cfg.learning_starts
            with probe.step(learning and probe.crosses(tally.updates, 1, cfg.probe_every), n, n):
                actions = actor.act(obs) if learning else \
                    act_rng.uniform(space.low, space.high, size=(n, act_dim)).astype(np.float32)
                next_obs, real_next, rewards, terminated, _ = env_step(envs, actions)
                buffer.add(obs, actions, rewards, real_next, terminated)  # truncation bootstraps
                obs = next_obs
                for _ in range(n if learning else 0):
                    batch, alpha = buffer.sample(cfg.batch_size), temperature.alpha()
                    critic_loss = variant.critic_step(critics, target_critics, actor, critic_opt,
                                                      batch, alpha, cfg.gamma)
                    actor_loss, entropy = variant.actor_step(
                        actor, critics, temperature, actor_opt, alpha_opt, batch["obs"],
                        -float(act_dim))  # the target entropy: -|A|
                    sync_target(target_critics, critics, cfg.tau)
                    tally.updates += 1
            if loop.due(cfg.log_every):
                loop.log(losses={"critic_loss": critic_loss}, actor_loss=float(actor_loss),
                         entropy=float(entropy), alpha=float(temperature.alpha()), **probe.record)
            if loop.due(cfg.eval_every, final=True):
                result = evaluate(actor.greedy, eval_envs, cfg.seed + 10_000, device)
                loop.evaluated(**result, entropy=float(entropy), alpha=float(temperature.alpha()))
                if loop.solved(result["eval_return_mean"], threshold):
                    break
        return loop.summary(**rl_results(loop, threshold), updates=tally.updates, **probe.record,
                            alpha=float(temperature.alpha()), env_steps_per_sec=probe.units_per_sec,
                            target_grad_seen=not grads_absent(target_critics))


# --- what the tour and `python -m gallery show sac` read ------------------------------------

def headline(s: dict) -> str:
    return (f"eval return {s['eval_return_mean']:.1f} after {s['env_steps']:,} env steps, alpha "
            f"{s['alpha']:.3f}, target grads seen: {s['target_grad_seen']}, saved bytes/update "
            f"{s['saved_bytes_per_update']:,}")


def tour_figure(runs: dict, fig) -> None:
    """Eval return and the temperature alpha; the pattern is drawn last, on top (target_grad trains
    the same weights, so its curve would hide the pattern's)."""
    returns, alphas = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for mistake in [m for m in BY_MISTAKE if m != "none"] + ["none"]:
        evals = runs.get(mistake, {}).get("evals") or []
        label = "pattern" if mistake == "none" else f"mistake={mistake}"
        if evals:
            draw_learning_curve(returns, evals, label)
            alphas.plot([e["env_steps"] for e in evals], [e.get("alpha") for e in evals],
                        marker="o", ms=3, label=label, lw=2.5 if mistake == "none" else 1.2)
    alphas.set(xlabel="env steps", ylabel="alpha (temperature)", yscale="log")
    alphas.legend(fontsize=8)


def measured(gate: dict, bench: dict) -> Measured:
    runs, row = gate["runs"], bench_row(bench, "sac", "target_grad_over_pattern")
    pattern, alpha = (avg(runs[m], "eval_return_mean") for m in ("none", "alpha_no_detach"))
    return Measured(
        (f"Pendulum eval return {pattern:.0f} (mean of seeds)",
         f"alpha_no_detach: eval return {alpha:.0f}; target_grad: "
         f"{row['target_grad_over_pattern']:.2f}x the bytes per update"),
        Panel("eval return", pattern, alpha, "alpha_no_detach"),
        Cost("target_grad", runs["none"][0]["env_steps_per_sec"]
             / runs["target_grad"][0]["env_steps_per_sec"], row["target_grad_over_pattern"],
             "time: scripts/gates.py sac, seed 0, 20k env steps each; bytes: scripts/bench.py sac"))


QUICK = ["steps=450", "learning_starts=150", "eval_every=225", "eval_episodes=1", "hidden=32",
         "batch_size=32", "probe_every=50"]
EXAMPLE = Example(
    name="sac",
    pattern="soft TD target under no_grad; the actor's loss does not train the critics; "
            "log_prob.detach() for alpha",
    pattern_functions=("make_targets", "make_optimizers", "soft_td_target", "critic_step",
                       "actor_alpha_step", "frozen", "sync_target"),
    mistakes={
        "target_grad": Mistake(
            "the TD target computed with grad enabled, through target critics that require grad",
            "target critics and the actor get .grad from the critic loss; more bytes saved for "
            "backward per update",
            ("make_targets_with_grad", "critic_step_target_grad"),
            caught="no_grad_reaches: a backward wrote a grad into target_critics",
        ),
        "actor_updates_critic": Mistake(
            "one optimizer over actor and critics, and the critics left requiring grad in the "
            "actor step",
            "the actor's loss, which maximises Q, also moves the critics",
            ("make_optimizers_shared", "actor_alpha_step_updates_critic"),
            caught="no_grad_reaches: a backward wrote a grad into critics",
        ),
        "alpha_no_detach": Mistake(
            "the temperature loss without log_prob.detach()",
            "its gradient reaches the actor, pushing the policy's entropy the wrong way",
            ("actor_alpha_step_alpha_no_detach",),
            no_check=("the temperature loss shares one backward with the actor "
                      "loss, so from outside the step the actor's grad cannot be split by loss; "
                      "check it where that loss is built: constant(logp=...)"),
        ),
    },
    budgets=tour_budgets(BY_MISTAKE, QUICK),
    headline=headline,
    figure=tour_figure,
    check=lambda s: "a target critic got .grad" if s["target_grad_seen"] else (
        None if s["saved_bytes_per_update"] else "no update was measured"),
    smoke=("steps=300", "learning_starts=100", "eval_every=300", "eval_episodes=1", "hidden=16",
           "batch_size=32", "probe_every=10"),
    report=("eval_return_mean", "env_steps", "alpha", "target_grad_seen", "env_steps_per_sec"),
    order=3,
    gate=Gate(
        "Pendulum-v1, the default config, seeds 0-2; beside it, each mistake on seed 0",
        runs={"none": Runs(), "target_grad": Runs("target_grad", (0,)),
              "actor_updates_critic": Runs("actor_updates_critic", (0,)),
              "alpha_no_detach": Runs("alpha_no_detach", (0,))},
        keys=("eval_return_mean", "alpha", "target_grad_seen", "saved_bytes_per_update",
              "env_steps_per_sec"),
        derive=lambda s: {"final_entropy": s["evals"][-1]["entropy"]},
        criteria=(
            Criterion("mean eval return >= -200 at 20k env steps, with no .grad ever in the "
                      "target critics", ("none",), each(lambda r: r["eval_return_mean"] >= -200
                                                        and not r["target_grad_seen"])),
            Criterion("each run under 5 minutes", ("none",),
                      each(lambda r: r["wall_seconds"] < 300), timed=True)),
        figure_runs=("none", "target_grad", "actor_updates_critic", "alpha_no_detach"),
        figure_title="sac on Pendulum-v1, default config, seed 0 (deterministic eval, 5 "
                     "episodes)"),
    measured=measured,
)


if __name__ == "__main__":
    command_line(EXAMPLE, train)
