"""GRPO on a tiny language model: the rollout, its old log-probs and the reference model are data.

    seq, old = sample_group(policy, prompts, group, length)     # under no_grad, ONCE per rollout:
                                                                # old = each character's log-prob
    advantages = group_advantages(reward(seq), group)           # a constant per completion
    ref = completion_logprobs(reference, seq)                   # a frozen copy, under no_grad
    for _ in range(passes):                                     # several steps on one rollout
        logp = completion_logprobs(policy, seq)
        ratio = exp(logp - old)                                 # 1 in the first pass, then moves
        loss = -min(ratio * A, clip(ratio) * A) + beta * k3(ref, logp)

In the first pass the ratio is 1 (to float rounding: `old` is what the sampler drew with) and its
gradient the policy gradient itself, not a ratio "stuck at 1" (`python -m gallery lessons`). Later
passes move the policy and the clip bites.

The task: a character transformer pretrained on CPython's reference docs (tbptt's text), then
trained by GRPO to keep its completions to a character set (the vowels), which it scores poorly on.

The mistakes (`mistake=`), and what they cost (scripts/gates.py grpo):

- old_logprobs_with_grad: the old log-probs recomputed with their graph in every pass: the ratio
  is 1 and its gradient 0, so only the KL term moves the policy and the reward stays flat.
- old_logprobs_recomputed: the old log-probs recomputed (detached) in every pass: the ratio is 1
  in every pass, the clip never bites (clip fraction 0) and the passes are unclipped steps.
- reference_is_policy: the reference is the policy itself: the KL is to the policy as it was at
  the rollout, never to the pretrained model, so the exact KL to it drifts.
- reference_with_grad: the reference copied without requires_grad_(False), its forward outside
  no_grad: .grad in the reference, its activations held; with passes > 1 the 2nd backward raises.
- k1_kl_loss: the k1 estimate (logp - ref) used as the loss: its gradient is zero in expectation,
  so the KL drifts as if beta were 0.

Run: python -m gallery.grpo seed=0 out_dir=/tmp/grpo
"""

from __future__ import annotations

import copy
from collections import namedtuple
from dataclasses import dataclass, field

import torch

from gallery.core import plots
from gallery.core.cli import command_line
from gallery.core.config import (
    BaseConfig,
    register_schema,
    require_non_negative,
    require_positive,
    require_range,
    validate_base,
)
from gallery.core.loop import Counters, Loop
from gallery.core.probes import Probe, graph_saved_bytes
from gallery.core.registry import (
    Criterion,
    Example,
    Gate,
    Measured,
    Mistake,
    Panel,
    Runs,
    avg,
    cost_of,
    each,
    tour_budgets,
)
from gallery.core.setup import prepare
from gallery.data.text import (
    CharVocab,
    TextSource,
    load_text,
    require_learnable,
    text_windows,
    validate_char_model,
)
from gallery.lm import completion_logprobs, pretrained, sample_with_logprobs

# --- config schema -----------------------------------------------------------------------------

@register_schema("grpo")
@dataclass
class GrpoConfig(BaseConfig):
    data: TextSource = field(default_factory=TextSource)
    steps: int = 120  # GRPO iterations: one rollout each
    prompts: int = 16  # prompts per rollout
    group: int = 8  # completions per prompt: each one's advantage is relative to its group
    prompt_len: int = 8
    completion_len: int = 16
    passes: int = 4  # optimizer steps on each rollout
    lr: float = 2e-3
    clip: float = 0.2
    beta: float = 0.3  # the weight of the KL penalty to the reference
    target_chars: str = "aeiou"  # the reward: the share of completion characters in this set
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    pretrain_steps: int = 800
    pretrain_dir: str = "${cache_dir:grpo}"  # the pretrained model, cached per seed and shape
    eval_prompts: int = 64  # held-out prompts for the reward and the exact KL
    log_every: int = 10
    eval_every: int = 20
    ckpt_every: int = 40


def validate(cfg: GrpoConfig) -> None:
    validate_base(cfg, BY_MISTAKE)
    validate_char_model(cfg)
    require_positive(cfg, "prompts", "passes", "lr")
    require_range(cfg, "group", 2, 1024)
    require_range(cfg, "clip", 0.0, 1.0)
    require_non_negative(cfg, "beta")


# --- the pattern --------------------------------------------------------------------------------

@torch.no_grad()  # PATTERN: sampling builds no graph
def sample_group(policy, prompts, group, length):
    """Each prompt repeated `group` times and continued by `length` sampled characters, and the
    log-prob the policy drew each character with: the old log-probs, (N, length)."""
    return sample_with_logprobs(policy, prompts.repeat_interleave(group, 0), length)


def reward(seq, prompt_len, targets):
    """The task: the share of each completion's characters that are in the target set, (N,)."""
    return torch.isin(seq[:, prompt_len:], targets).float().mean(1)


def group_advantages(rewards, group):
    """Each completion's reward against its group's mean, in units of the group's spread."""
    r = rewards.view(-1, group)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1)


def make_reference(policy):
    """The reference: the pretrained model as it is now, never trained, in eval mode."""
    return copy.deepcopy(policy).requires_grad_(False).eval()  # PATTERN: frozen


def rollout(policy, reference, prompts, group, length, targets):
    """A group of completions per prompt, their rewards and group-relative advantages, and the
    policy's and the reference's log-probs of them: all data, computed once per rollout."""
    prompt_len = prompts.shape[1]
    seq, old = sample_group(policy, prompts, group, length)  # PATTERN: the old log-probs, once
    rewards = reward(seq, prompt_len, targets)
    with torch.no_grad():  # PATTERN: the reference's log-probs are data too
        ref = completion_logprobs(reference, seq, prompt_len)
    return {"seq": seq, "rewards": rewards, "advantages": group_advantages(rewards, group),
            "old_logprobs": old, "ref_logprobs": ref}


def grpo_loss(logp, old_logprobs, ref_logprobs, advantages, clip, beta, mask=None):
    """The clipped surrogate with the k3 KL penalty, averaged over each completion's own characters
    (`mask`: 0 on padding; None: all, as in these fixed-length rollouts), then over the batch; and
    the share of characters clipped. In the first pass the ratio is 1 and its gradient the policy
    gradient. k3 is >= 0 and unbiased for KL(policy || ref); its gradient is KL(ref || policy)'s."""
    mask = torch.ones_like(logp) if mask is None else mask
    ratio = torch.exp(logp - old_logprobs)
    a = advantages[:, None]
    surrogate = torch.min(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    log_ref_over_policy = ref_logprobs - logp
    kl = torch.exp(log_ref_over_policy) - log_ref_over_policy - 1  # PATTERN: k3
    clipped = (((ratio - 1).abs() > clip).float() * mask).sum() / mask.sum().clamp(min=1)
    per_completion = ((surrogate - beta * kl) * mask).sum(1) / mask.sum(1).clamp(min=1)  # PATTERN
    return -per_completion.mean(), clipped.detach()


def grpo_update(policy, optimizer, batch, clip, beta, passes, prompt_len):
    """`passes` optimizer steps on one rollout, against its stored old and reference log-probs.
    Returns the last loss and each pass's clip fraction."""
    clipped = []
    for _ in range(passes):
        logp = completion_logprobs(policy, batch["seq"], prompt_len)
        loss, share = grpo_loss(logp, batch["old_logprobs"], batch["ref_logprobs"],
                                batch["advantages"], clip, beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clipped.append(share)
    return loss.detach(), clipped


# --- the mistakes -------------------------------------------------------------------------------

def grpo_update_old_logprobs_with_grad(policy, optimizer, batch, clip, beta, passes, prompt_len):
    clipped = []
    for _ in range(passes):
        logp = completion_logprobs(policy, batch["seq"], prompt_len)
        old = completion_logprobs(policy, batch["seq"], prompt_len)  # MISTAKE: a graph, each pass
        loss, share = grpo_loss(logp, old, batch["ref_logprobs"],
                                batch["advantages"], clip, beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clipped.append(share)
    return loss.detach(), clipped


def grpo_update_old_logprobs_recomputed(
        policy, optimizer, batch, clip, beta, passes, prompt_len):
    clipped = []
    for _ in range(passes):
        logp = completion_logprobs(policy, batch["seq"], prompt_len)
        old = logp.detach()  # MISTAKE: recomputed in every pass, from the policy as it is now
        loss, share = grpo_loss(logp, old, batch["ref_logprobs"],
                                batch["advantages"], clip, beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clipped.append(share)
    return loss.detach(), clipped


def make_reference_is_policy(policy):
    return policy  # MISTAKE: the same module: it moves with every step


def make_reference_with_grad(policy):
    return copy.deepcopy(policy).eval()  # MISTAKE: the copy still requires grad


def rollout_reference_with_grad(policy, reference, prompts, group, length, targets):
    prompt_len = prompts.shape[1]
    seq, old = sample_group(policy, prompts, group, length)
    rewards = reward(seq, prompt_len, targets)
    ref = completion_logprobs(reference, seq, prompt_len)  # MISTAKE: outside no_grad: a graph
    return {"seq": seq, "rewards": rewards, "advantages": group_advantages(rewards, group),
            "old_logprobs": old, "ref_logprobs": ref}


def grpo_loss_k1_kl_loss(logp, old_logprobs, ref_logprobs, advantages, clip, beta, mask=None):
    mask = torch.ones_like(logp) if mask is None else mask
    ratio = torch.exp(logp - old_logprobs)
    a = advantages[:, None]
    surrogate = torch.min(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    log_ref_over_policy = ref_logprobs - logp
    kl = -log_ref_over_policy  # MISTAKE: k1, whose gradient is zero in expectation
    clipped = (((ratio - 1).abs() > clip).float() * mask).sum() / mask.sum().clamp(min=1)
    per_completion = ((surrogate - beta * kl) * mask).sum(1) / mask.sum(1).clamp(min=1)
    return -per_completion.mean(), clipped.detach()


def grpo_update_k1_kl_loss(policy, optimizer, batch, clip, beta, passes, prompt_len):
    clipped = []
    for _ in range(passes):
        logp = completion_logprobs(policy, batch["seq"], prompt_len)
        loss, share = grpo_loss_k1_kl_loss(  # MISTAKE: the loss with k1 as its KL term
            logp, batch["old_logprobs"], batch["ref_logprobs"], batch["advantages"], clip, beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clipped.append(share)
    return loss.detach(), clipped


# the functions of a run that a mistake can swap, by name: the loop calls these
GrpoSteps = namedtuple("GrpoSteps", ["make_reference", "rollout", "update"])
PATTERN = GrpoSteps(make_reference, rollout, grpo_update)
BY_MISTAKE = {
    "none": PATTERN,
    "old_logprobs_with_grad": PATTERN._replace(update=grpo_update_old_logprobs_with_grad),
    "old_logprobs_recomputed": PATTERN._replace(update=grpo_update_old_logprobs_recomputed),
    "reference_is_policy": PATTERN._replace(make_reference=make_reference_is_policy),
    "reference_with_grad": PATTERN._replace(make_reference=make_reference_with_grad,
                                            rollout=rollout_reference_with_grad),
    "k1_kl_loss": PATTERN._replace(update=grpo_update_k1_kl_loss),
}
KNOWN_ERRORS = {
    "reference_with_grad": ("backward through the graph a second time",
        "mistake=reference_with_grad: the reference's log-probs were computed with a graph once "
        "per rollout, and the first pass's backward freed it; the second pass backpropagates "
        "into it again. Fix: make the reference with requires_grad_(False) and compute its "
        "log-probs under no_grad (or run passes=1 to see the .grad it collects)."),
}


# --- data, pretraining and measurement (off the training path) --------------------------------

@torch.no_grad()
def evaluate(policy, original, prompts, cfg, targets) -> dict:
    """The mean reward of sampled completions, and the exact KL(policy || pretrained model) over
    the whole vocabulary at the sampled positions, per character."""
    seq, _ = sample_group(policy, prompts, 1, cfg.completion_len)
    logp = torch.log_softmax(policy(seq[:, :-1])[:, cfg.prompt_len - 1:], -1)
    logq = torch.log_softmax(original(seq[:, :-1])[:, cfg.prompt_len - 1:], -1)
    kl = (logp.exp() * (logp - logq)).sum(-1).mean()
    return {"reward": float(reward(seq, cfg.prompt_len, targets).mean()), "exact_kl": float(kl)}


def draw_curves(axes, evals: list[dict], label: str) -> None:
    steps = [e["step"] for e in evals]
    for ax, key, name in zip(axes, ("reward", "exact_kl"), ("mean reward", "exact KL to start")):
        ax.plot(steps, [e[key] for e in evals], marker="o", ms=3, label=label)
        ax.set(xlabel="GRPO step", ylabel=name)
    axes[0].legend(fontsize=7)


# --- training loop ------------------------------------------------------------------------------

def train(cfg) -> dict:
    cfg, device = prepare(cfg, validate, single_thread=lambda c: c.d_model <= 128)
    text = load_text(cfg.data.name, cfg.data.path, cfg.data.root)
    require_learnable(text, cfg.prompt_len + cfg.completion_len, cfg.target_chars)
    vocab = CharVocab.build(text)
    ids, steps = vocab.encode(text), BY_MISTAKE[cfg.mistake]
    targets = vocab.encode(cfg.target_chars).to(device)
    policy = pretrained(cfg, vocab, ids, device)
    original = copy.deepcopy(policy).requires_grad_(False).eval()  # measurement only
    reference = steps.make_reference(policy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    prompts_rng = torch.Generator().manual_seed(cfg.seed)
    held_out = text_windows(ids, cfg.eval_prompts, cfg.prompt_len,
                            torch.Generator().manual_seed(10_000)).to(device)
    counts = Counters(clip_fraction_sums=[0.0] * cfg.passes, rollouts=0, reference_held_bytes=0)
    stateful = {"policy": policy, "reference": reference, "optimizer": optimizer, "counts": counts,
                "prompts_rng": prompts_rng}
    probe = Probe(device, saved_bytes_name="saved_bytes_per_rollout")  # on log steps only
    start = evaluate(policy, original, held_out, cfg, targets)
    with Loop(cfg, EXAMPLE.name, stateful, device, cfg.data.name,
              known_errors=KNOWN_ERRORS) as loop:
        if loop.finished_summary:
            return loop.finished_summary
        for _ in loop:
            with probe.step(sampled=loop.sampled(cfg.log_every)):
                prompts = text_windows(ids, cfg.prompts, cfg.prompt_len, prompts_rng).to(device)
                batch = steps.rollout(policy, reference, prompts, cfg.group, cfg.completion_len,
                                      targets)
                counts.reference_held_bytes = graph_saved_bytes(batch["ref_logprobs"])
                loss, clipped = steps.update(policy, optimizer, batch, cfg.clip, cfg.beta,
                                             cfg.passes, cfg.prompt_len)
            counts.rollouts += 1
            counts.clip_fraction_sums = [s + float(c) for s, c in
                                         zip(counts.clip_fraction_sums, clipped)]
            if loop.due(cfg.log_every):
                loop.log(losses={"loss": loss}, train_reward=float(batch["rewards"].mean()))
            if loop.due(cfg.eval_every, final=True):
                loop.evaluated(**evaluate(policy, original, held_out, cfg, targets))
        figure = loop.run.path("reward_and_kl.png")
        plots.figure(figure, draw_curves, loop.evals, f"mistake={cfg.mistake}", panels=2)
        return loop.summary(
            reward_at_start=start["reward"], reward=loop.evals[-1]["reward"],
            exact_kl=loop.evals[-1]["exact_kl"], curve=loop.evals,
            clip_fraction_per_pass=[s / max(counts.rollouts, 1)
                                    for s in counts.clip_fraction_sums],
            reference_has_grad=any(p.grad is not None for p in reference.parameters()),
            policy_moved=any(not torch.equal(p, q) for p, q in zip(policy.parameters(),
                                                                  original.parameters())),
            reference_held_bytes=counts.reference_held_bytes, **probe.record,
            steps_per_sec=probe.units_per_sec)


# --- what the tour, `show`, the README and the hero figure read ----------------------------------

def headline(s: dict) -> str:
    passes = ", ".join(f"{c:.2f}" for c in s["clip_fraction_per_pass"])
    return (f"reward {s['reward_at_start']:.3f} -> {s['reward']:.3f}; exact KL to the pretrained "
            f"model {s['exact_kl']:.3f}; clip fraction per pass {passes}; reference .grad: "
            f"{s['reference_has_grad']}")


def tour_figure(runs: dict, fig) -> None:
    axes = [fig.add_subplot(1, 3, i) for i in (1, 2, 3)]
    for mistake, s in runs.items():
        if "curve" not in s:
            continue
        label = plots.label(mistake)
        draw_curves(axes[:2], s["curve"], label)
        axes[2].plot(range(1, len(s["clip_fraction_per_pass"]) + 1), s["clip_fraction_per_pass"],
                     marker="o", label=label)
    axes[2].set(xlabel="pass over the rollout", ylabel="clip fraction", xticks=[1, 2, 3, 4])


def measured(gate: dict, bench: dict) -> Measured:
    runs = gate["runs"]
    kl = {m: avg(runs[m], "exact_kl") for m in ("none", "k1_kl_loss", "reference_is_policy")}
    start, end = avg(runs["none"], "reward_at_start"), avg(runs["none"], "reward")
    flat = avg(runs["old_logprobs_with_grad"], "reward")
    one, held = runs["none passes=1"], runs["reference_with_grad passes=1"]
    return Measured(
        (f"reward {start:.2f} -> {end:.2f}, exact KL {kl['none']:.2f} nats/char",
         f"old_logprobs_with_grad: reward {flat:.2f}; k1_kl_loss: KL {kl['k1_kl_loss']:.2f}; "
         f"reference_is_policy: KL {kl['reference_is_policy']:.2f}"),
        Panel("exact KL to the pretrained model", kl["none"], kl["k1_kl_loss"], "k1_kl_loss"),
        cost_of("reference_with_grad", one, held, "scripts/gates.py grpo, seeds 0-2, passes=1 both",
                "steps_per_sec", "saved_bytes_per_rollout"))


QUICK = ["steps=6", "eval_every=6", "log_every=3", "pretrain_steps=100", "prompts=8", "group=4",
         "eval_prompts=16"]
EXAMPLE = Example(
    name="grpo",
    pattern="RL on a tiny language model: the old log-probs stored once per rollout, the reference "
            "frozen and under no_grad, the advantages constant, the k3 KL",
    pattern_functions=("sample_group", "completion_logprobs", "reward", "group_advantages",
                       "make_reference", "rollout", "grpo_loss", "grpo_update"),
    mistakes={
        "old_logprobs_with_grad": Mistake(
            "the old log-probs recomputed with their graph in every pass",
            "the ratio is 1 and its gradient 0: only the KL term moves the policy; the reward "
            "stays flat",
            ("grpo_update_old_logprobs_with_grad",),
            caught="constant: old_logprobs[0] (grad_fn=",
        ),
        "old_logprobs_recomputed": Mistake(
            "the old log-probs recomputed (detached) from the current policy in every pass",
            "the ratio is 1 in every pass: the clip never bites (clip fraction 0 in every pass)",
            ("grpo_update_old_logprobs_recomputed",),
            no_check="the old log-probs are constants, computed at the wrong time: a value, not "
                     "a graph; the clip fraction per pass (0 in every pass) catches it",
        ),
        "reference_is_policy": Mistake(
            "the reference is the policy itself",
            "the KL is to the policy at the rollout, never to the pretrained model: the exact KL "
            "to it drifts",
            ("make_reference_is_policy",),
            caught="disjoint: policy and reference share",
        ),
        "reference_with_grad": Mistake(
            "the reference copied without requires_grad_(False), its log-probs outside no_grad",
            "the KL term writes .grad into the reference and holds its activations for backward; "
            "with passes > 1 the second backward raises",
            ("make_reference_with_grad", "rollout_reference_with_grad"),
            caught="constant: ref_logprobs (grad_fn=",
        ),
        "k1_kl_loss": Mistake(
            "the k1 estimate (logp - ref) used as the KL loss",
            "its gradient is zero in expectation: the KL to the reference drifts as if beta were 0",
            ("grpo_loss_k1_kl_loss", "grpo_update_k1_kl_loss"),
            no_check="a correct graph with the wrong estimator: every tensor is what its check "
                     "expects; the exact KL in the summary catches it",
        ),
    },
    budgets=tour_budgets(BY_MISTAKE, QUICK, reference_with_grad=["passes=1"]),
    headline=headline,
    figure=tour_figure,
    figure_size=(12, 3.6),
    check=lambda s: "the reference got .grad" if s["reference_has_grad"] else None,
    smoke=("steps=4", "eval_every=2", "log_every=2", "pretrain_steps=20", "prompts=4", "group=4",
           "eval_prompts=8"),
    report=("reward_at_start", "reward", "exact_kl", "clip_fraction_per_pass",
            "reference_has_grad", "steps_per_sec"),
    order=10,
    gate=Gate(
        "pydoc, seeds 0-2",
        runs={"none": Runs(), **{m: Runs(m) for m in ("old_logprobs_with_grad",
                                                      "old_logprobs_recomputed",
                                                      "reference_is_policy", "k1_kl_loss")},
              "none passes=1": Runs(overrides=("passes=1",)),
              "reference_with_grad passes=1": Runs("reference_with_grad", overrides=("passes=1",))},
        keys=("reward_at_start", "reward", "exact_kl", "clip_fraction_per_pass", "policy_moved",
              "reference_has_grad", "reference_held_bytes", "saved_bytes_per_rollout",
              "steps_per_sec"),
        criteria=(
            Criterion("the pattern's mean reward rises by >= 0.15 over the pretrained model's with "
                      "its exact KL <= 2 nats per character, its last pass clipping >= 5% of "
                      "characters and no .grad in its reference", ("none",), each(
                          lambda r: r["reward"] >= r["reward_at_start"] + 0.15
                          and r["exact_kl"] <= 2.0 and not r["reference_has_grad"]
                          and r["clip_fraction_per_pass"][-1] >= 0.05)),
            Criterion("old_logprobs_with_grad's reward stays within 0.08 of the start",
                      ("old_logprobs_with_grad",),
                      each(lambda r: r["reward"] <= r["reward_at_start"] + 0.08)),
            Criterion("old_logprobs_recomputed never clips", ("old_logprobs_recomputed",),
                      each(lambda r: max(r["clip_fraction_per_pass"]) == 0)),
            *(Criterion(f"{m} ends with >= 3x the pattern's exact KL on the same seed",
                        ("none", m), each(lambda p, r: r["exact_kl"] >= 3 * p["exact_kl"]))
              for m in ("k1_kl_loss", "reference_is_policy")),
            Criterion("reference_with_grad (passes=1) writes .grad into the reference and holds "
                      "more bytes than the pattern at passes=1",
                      ("none passes=1", "reference_with_grad passes=1"), each(
                          lambda p, m: m["reference_has_grad"]
                          and m["saved_bytes_per_rollout"] > p["saved_bytes_per_rollout"]))),
        figure_runs=("none", "old_logprobs_with_grad", "old_logprobs_recomputed",
                     "reference_is_policy", "k1_kl_loss"),
        figure_title="grpo on pydoc, default config, seed 0"),
    measured=measured,
    size_keys=("prompts", "group", "completion_len"),
)


if __name__ == "__main__":
    command_line(EXAMPLE, train)
