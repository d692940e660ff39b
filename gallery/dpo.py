"""DPO on a tiny language model: the reference is frozen, in eval mode, and its log-probs are data.

    reference = copy.deepcopy(policy).requires_grad_(False).eval()   # frozen, dropout off
    with torch.no_grad():
        ref_chosen, ref_rejected = logps(reference, pairs)          # constants, once per batch
    chosen, rejected = logps(policy, pairs)                         # the policy's, with a graph
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)      # the implicit reward margin
    loss = -logsigmoid(beta * margin).mean()

A completion's log-prob is the sum over its own characters only: completions end at a stop
character, and what follows it is padding that a completion mask leaves out.

The task: grpo's character transformer (gallery/lm.py) pretrained on CPython's reference docs,
with dropout. The preference pairs are built offline, once: two completions sampled from the
pretrained model for each prompt, the one with the larger share of target characters (the vowels)
chosen. DPO then trains on them, and the run reports the reward of completions sampled from the
policy, the exact KL to the pretrained model, and the preference accuracy on held-out pairs (the
share whose implicit reward margin is positive).

The mistakes (`mistake=`), and what they cost (scripts/gates.py dpo):

- reference_is_policy: the live policy as its own reference: the margin is 0 in value, the
  held-out loss reads log 2 = 0.693 at every evaluation (the training loss moves off it only by the
  policy's dropout), the held-out accuracy is 0 (no margin is positive), and with nothing to hold
  it the policy drifts far from the pretrained model.
- reference_with_grad: the reference copied without requires_grad_(False) and its forward outside
  no_grad: every backward runs through the reference too, writes .grad into it and holds its
  activations.
- reference_train_mode: the reference left in train mode: its dropout makes its log-probs noisy,
  so the same pair gets another reference value on every call.
- unmasked_logprobs: a completion's log-prob summed over every position, padding included: the
  padding's log-probs enter every margin, and a short completion carries more of them. The policy
  leaves the pretrained model further (a larger exact KL), ranks held-out pairs worse when they are
  scored with masks, and, on some seeds, learns to end its completions sooner.

Run: python -m gallery.dpo seed=0 out_dir=/tmp/dpo
"""

from __future__ import annotations

import copy
import math
from collections import namedtuple
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from gallery.core import plots
from gallery.core.cli import command_line
from gallery.core.config import (
    BaseConfig,
    register_schema,
    require_positive,
    require_range,
    validate_base,
)
from gallery.core.errors import ConfigError
from gallery.core.loop import Loop
from gallery.core.probes import Probe
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
from gallery.lm import completion_logprobs, pretrained, sample
from gallery.nets import eval_mode

# --- config schema -----------------------------------------------------------------------------

@register_schema("dpo")
@dataclass
class DpoConfig(BaseConfig):
    data: TextSource = field(default_factory=TextSource)
    steps: int = 300  # optimizer steps, one batch of pairs each
    pairs: int = 1024  # training prompts, two sampled completions each (ties dropped)
    held_out_pairs: int = 256  # prompts for the held-out preference accuracy (ties dropped)
    batch_size: int = 32  # pairs per step
    prompt_len: int = 8
    completion_len: int = 16  # at most; a completion ends at its first stop character
    stop_chars: str = " "  # where a completion ends; the rest is padding
    lr: float = 1e-3
    beta: float = 0.1  # how strongly the policy is held to the reference
    target_chars: str = "aeiou"  # the preference: the larger share of these characters wins
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    pretrain_steps: int = 800
    pretrain_dir: str = "${cache_dir:dpo}"  # the pretrained model, cached per seed and shape
    eval_prompts: int = 64  # held-out prompts for the reward and the exact KL
    log_every: int = 25
    eval_every: int = 50
    ckpt_every: int = 100


def validate(cfg: DpoConfig) -> None:
    validate_base(cfg, BY_MISTAKE)
    validate_char_model(cfg)
    # beta=0: the loss is log 2 whatever the margin, and its gradient 0: nothing trains
    require_positive(cfg, "steps", "pairs", "held_out_pairs", "batch_size", "lr", "beta")
    require_range(cfg, "dropout", 0.0, 0.9)
    if not cfg.stop_chars:
        raise ConfigError("stop_chars must name at least one character, got ''")


# --- the pattern --------------------------------------------------------------------------------

def completion_mask(seq, prompt_len, stop_ids):
    """1 for each completion character up to and including its first stop character, 0 after."""
    stops = torch.isin(seq[:, prompt_len:], stop_ids).long()
    return (stops.cumsum(1) - stops == 0).float()


def sequence_logprobs(model, seq, mask, prompt_len):
    """log pi(completion | prompt): the sum over the completion's own characters, (N,)."""
    return (completion_logprobs(model, seq, prompt_len) * mask).sum(1)  # PATTERN: masked


def make_reference(policy):
    """The reference: the pretrained model as it is now, never trained, in eval mode."""
    return copy.deepcopy(policy).requires_grad_(False).eval()  # PATTERN: frozen, no dropout


@torch.no_grad()  # PATTERN: the reference's log-probs are constants
def reference_logprobs(reference, batch, prompt_len):
    """The reference's log-probs of the chosen and the rejected completions: (N,), (N,)."""
    return (sequence_logprobs(reference, batch["chosen"], batch["chosen_mask"], prompt_len),
            sequence_logprobs(reference, batch["rejected"], batch["rejected_mask"], prompt_len))


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """-log sigmoid(beta * margin), where the margin is how much more the policy raised the chosen
    completion over the reference than the rejected one."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


def dpo_step(policy, reference, optimizer, batch, beta, prompt_len):
    """One optimizer step on a batch of pairs; the chosen and rejected in one forward."""
    ref_chosen, ref_rejected = reference_logprobs(reference, batch, prompt_len)
    seq = torch.cat([batch["chosen"], batch["rejected"]])
    mask = torch.cat([batch["chosen_mask"], batch["rejected_mask"]])
    chosen, rejected = sequence_logprobs(policy, seq, mask, prompt_len).chunk(2)
    loss = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


# --- the mistakes -------------------------------------------------------------------------------

def make_reference_is_policy(policy):
    return policy  # MISTAKE: the same module: the margin is 0, the loss log 2


def make_reference_with_grad(policy):
    return copy.deepcopy(policy).eval()  # MISTAKE: the copy still requires grad


def dpo_step_reference_with_grad(policy, reference, optimizer, batch, beta, prompt_len):
    ref_chosen = sequence_logprobs(  # MISTAKE: outside no_grad: a graph through the reference
        reference, batch["chosen"], batch["chosen_mask"], prompt_len)
    ref_rejected = sequence_logprobs(reference, batch["rejected"], batch["rejected_mask"],
                                     prompt_len)
    seq = torch.cat([batch["chosen"], batch["rejected"]])
    mask = torch.cat([batch["chosen_mask"], batch["rejected_mask"]])
    chosen, rejected = sequence_logprobs(policy, seq, mask, prompt_len).chunk(2)
    loss = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def make_reference_train_mode(policy):
    return copy.deepcopy(policy).requires_grad_(False)  # MISTAKE: still in train mode: dropout


def dpo_step_unmasked_logprobs(policy, reference, optimizer, batch, beta, prompt_len):
    ref_chosen, ref_rejected = reference_logprobs(reference, batch, prompt_len)
    seq = torch.cat([batch["chosen"], batch["rejected"]])
    chosen, rejected = completion_logprobs(  # MISTAKE: every position summed, padding too
        policy, seq, prompt_len).sum(1).chunk(2)
    loss = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


# the functions of a run that a mistake can swap, by name: the loop calls these
DpoSteps = namedtuple("DpoSteps", ["make_reference", "step"])
PATTERN = DpoSteps(make_reference, dpo_step)
BY_MISTAKE = {
    "none": PATTERN,
    "reference_is_policy": PATTERN._replace(make_reference=make_reference_is_policy),
    "reference_with_grad": DpoSteps(make_reference_with_grad, dpo_step_reference_with_grad),
    "reference_train_mode": PATTERN._replace(make_reference=make_reference_train_mode),
    "unmasked_logprobs": PATTERN._replace(step=dpo_step_unmasked_logprobs),
}


# --- the preference pairs, and measurement (off the training path) ------------------------------

@torch.no_grad()
def sampled(model, prompts, group, cfg, stop_ids):
    """`group` completions per prompt from the model in eval mode, each cut at its first stop
    character and padded with it after; their masks."""
    with eval_mode(model):
        seq = sample(model, prompts.repeat_interleave(group, 0), cfg.completion_len)
    mask = completion_mask(seq, cfg.prompt_len, stop_ids)
    seq[:, cfg.prompt_len:] = torch.where(mask.bool(), seq[:, cfg.prompt_len:], stop_ids[0])
    return seq, mask


def rewards(seq, mask, prompt_len, targets):
    """The share of each completion's own characters that are in the target set, (N,)."""
    hits = torch.isin(seq[:, prompt_len:], targets).float()
    return (hits * mask).sum(1) / mask.sum(1)


def preference_pairs(model, prompts, cfg, stop_ids, targets) -> dict:
    """Two completions per prompt; the larger share of target characters is chosen, ties
    dropped. Built once, before training, from the pretrained model."""
    seq, mask = sampled(model, prompts, 2, cfg, stop_ids)
    r = rewards(seq, mask, cfg.prompt_len, targets).view(-1, 2)
    keep = r[:, 0] != r[:, 1]
    rows, won = torch.arange(int(keep.sum())), (r[keep, 1] > r[keep, 0]).long()  # 0 or 1
    pairs = {}
    for name, t in (("", seq), ("_mask", mask)):
        both = t.view(-1, 2, t.shape[1])[keep]
        pairs[f"chosen{name}"], pairs[f"rejected{name}"] = both[rows, won], both[rows, 1 - won]
    return pairs


def require_pairs(pairs: dict, asked: str, target_chars: str) -> None:
    """Refuse, naming the key, a set where every sampled pair tied: nothing to prefer."""
    if len(pairs["chosen"]) == 0:
        raise ConfigError(f"{asked}: every sampled pair scored the same share of "
                          f"target_chars={target_chars!r}, so no preference pair is left; ask for "
                          f"more pairs, or target characters the text holds")


def batch_of(pairs: dict, size: int, generator: torch.Generator) -> dict:
    """`size` pairs drawn at random (the generator's state is the whole data position, so a
    resumed run draws what the straight run would)."""
    idx = torch.randint(len(pairs["chosen"]), (size,), generator=generator)
    return {k: v[idx.to(v.device)] for k, v in pairs.items()}


@torch.no_grad()
def evaluate(policy, reference, original, prompts, held_out, cfg, stop_ids, targets) -> dict:
    """The mean reward and length of completions sampled from the policy; the exact KL(policy ||
    pretrained model) over the whole vocabulary at their own characters, per character; and, on
    held-out pairs against the run's own reference, the loss and the preference accuracy (the
    share whose implicit reward margin is positive, every log-prob masked: scored the pattern's
    way whatever the run's mistake)."""
    seq, mask = sampled(policy, prompts, 1, cfg, stop_ids)
    with eval_mode(policy):
        logp = torch.log_softmax(policy(seq[:, :-1])[:, cfg.prompt_len - 1:], -1)
        logq = torch.log_softmax(original(seq[:, :-1])[:, cfg.prompt_len - 1:], -1)
        kl = ((logp.exp() * (logp - logq)).sum(-1) * mask).sum() / mask.sum()
        ref_chosen, ref_rejected = reference_logprobs(reference, held_out, cfg.prompt_len)
        chosen, rejected = (sequence_logprobs(policy, held_out[k], held_out[f"{k}_mask"],
                                              cfg.prompt_len) for k in ("chosen", "rejected"))
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    return {"reward": float(rewards(seq, mask, cfg.prompt_len, targets).mean()),
            "exact_kl": float(kl), "length": float(mask.sum(1).mean()),
            "held_out_accuracy": float((margin > 0).float().mean()),
            "held_out_loss": float(dpo_loss(chosen, rejected, ref_chosen, ref_rejected, cfg.beta))}


@torch.no_grad()
def reference_noise(reference, held_out, prompt_len) -> float:
    """The mean |difference| between two calls of the reference on the same held-out pairs, in
    nats: 0 for a reference in eval mode."""
    first, second = (reference_logprobs(reference, held_out, prompt_len) for _ in range(2))
    return float((first[0] - second[0]).abs().mean())


def draw_curves(axes, evals: list[dict], label: str) -> None:
    steps = [e["step"] for e in evals]
    for ax, key, name in zip(axes, ("reward", "exact_kl", "held_out_accuracy"),
                             ("mean reward", "exact KL to the pretrained model",
                              "held-out preference accuracy")):
        ax.plot(steps, [e[key] for e in evals], marker="o", ms=3, label=label)
        ax.set(xlabel="DPO step", ylabel=name)
    axes[0].legend(fontsize=7)


# --- training loop ------------------------------------------------------------------------------

def train(cfg) -> dict:
    cfg, device = prepare(cfg, validate, single_thread=lambda c: c.d_model <= 128)
    text = load_text(cfg.data.name, cfg.data.path, cfg.data.root)
    require_learnable(text, cfg.prompt_len + cfg.completion_len, cfg.target_chars)
    vocab = CharVocab.build(text)
    ids, steps = vocab.encode(text), BY_MISTAKE[cfg.mistake]
    targets, stop_ids = (vocab.encode(c).to(device) for c in (cfg.target_chars, cfg.stop_chars))
    policy = pretrained(cfg, vocab, ids, device, cfg.dropout)
    original = copy.deepcopy(policy).requires_grad_(False).eval()  # measurement only
    generator = torch.Generator().manual_seed(cfg.seed)
    pairs, held_out = (preference_pairs(original, text_windows(ids, n, cfg.prompt_len, g).to(
        device), cfg, stop_ids, targets) for n, g in ((cfg.pairs, generator), (
            cfg.held_out_pairs, torch.Generator().manual_seed(10_000))))
    require_pairs(pairs, f"pairs={cfg.pairs}", cfg.target_chars)
    require_pairs(held_out, f"held_out_pairs={cfg.held_out_pairs}", cfg.target_chars)
    prompts = text_windows(ids, cfg.eval_prompts, cfg.prompt_len,
                           torch.Generator().manual_seed(20_000)).to(device)
    reference = steps.make_reference(policy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    stateful = {"policy": policy, "reference": reference, "optimizer": optimizer,
                "generator": generator}
    probe = Probe(device, saved_bytes_name="step_saved_bytes")  # on log steps only
    measure = lambda: evaluate(policy, reference, original, prompts, held_out, cfg,  # noqa: E731
                               stop_ids, targets)
    start = measure()
    with Loop(cfg, EXAMPLE.name, stateful, device, cfg.data.name) as loop:
        if loop.finished_summary:
            return loop.finished_summary
        for _ in loop:
            with probe.step(sampled=loop.sampled(cfg.log_every)):
                batch = batch_of(pairs, cfg.batch_size, generator)
                loss = steps.step(policy, reference, optimizer, batch, cfg.beta, cfg.prompt_len)
            if loop.due(cfg.log_every):
                loop.log(losses={"loss": loss})
            if loop.due(cfg.eval_every, final=True):
                loop.evaluated(**measure())
        plots.figure(loop.run.path("dpo_curves.png"), draw_curves, loop.evals,
                     f"mistake={cfg.mistake}", panels=3)
        return loop.summary(
            reward_at_start=start["reward"], reward=loop.evals[-1]["reward"],
            exact_kl=loop.evals[-1]["exact_kl"],
            **{k: loop.evals[-1][k] for k in ("held_out_accuracy", "held_out_loss", "length")},
            length_at_start=start["length"], final_loss=float(loss),
            pairs=len(pairs["chosen"]), curve=loop.evals,
            reference_noise=reference_noise(reference, held_out, cfg.prompt_len),
            reference_has_grad=any(p.grad is not None for p in reference.parameters()),
            **probe.record, steps_per_sec=probe.units_per_sec)


# --- what the tour, `show`, the README and the hero figure read ----------------------------------

def headline(s: dict) -> str:
    return (f"reward {s['reward_at_start']:.3f} -> {s['reward']:.3f}; held-out preference accuracy "
            f"{s['held_out_accuracy']:.2f}; exact KL to the pretrained model {s['exact_kl']:.3f}; "
            f"loss {s['final_loss']:.3f}; reference noise {s['reference_noise']:.3f} nats; "
            f"reference .grad: {s['reference_has_grad']}")


def measured(gate: dict, bench: dict) -> Measured:
    runs = gate["runs"]
    kl = {m: avg(runs[m], "exact_kl") for m in ("none", "reference_is_policy")}
    start, end = avg(runs["none"], "reward_at_start"), avg(runs["none"], "reward")
    same = runs["reference_is_policy"]
    return Measured(
        (f"reward {start:.2f} -> {end:.2f}, held-out preference accuracy "
         f"{avg(runs['none'], 'held_out_accuracy'):.0%}, exact KL {kl['none']:.2f} nats/char",
         f"reference_is_policy: held-out loss {avg(same, 'held_out_loss'):.3f}, accuracy "
         f"{avg(same, 'held_out_accuracy'):.0%}, KL {kl['reference_is_policy']:.2f}"),
        Panel("exact KL to the pretrained model", kl["none"], kl["reference_is_policy"],
              "reference_is_policy"),
        cost_of("reference_with_grad", runs["none"], runs["reference_with_grad"],
                "scripts/gates.py dpo, seeds 0-2", "steps_per_sec", "step_saved_bytes"))


QUICK = ["steps=12", "eval_every=12", "log_every=6", "pretrain_steps=100", "pairs=96",
         "held_out_pairs=32", "batch_size=16", "eval_prompts=8"]
EXAMPLE = Example(
    name="dpo",
    pattern="preference learning against a frozen reference: eval mode, its log-probs under "
            "no_grad, completion masks",
    pattern_functions=("completion_mask", "sequence_logprobs", "make_reference",
                       "reference_logprobs", "dpo_loss", "dpo_step"),
    mistakes={
        "reference_is_policy": Mistake(
            "the live policy used as its own reference",
            "the margin is 0: the held-out loss reads log 2, no held-out margin is positive, "
            "and nothing holds the policy near the pretrained model",
            ("make_reference_is_policy",),
            caught="disjoint: policy and reference share"),
        "reference_with_grad": Mistake(
            "the reference copied without requires_grad_(False), its log-probs outside no_grad",
            "every backward runs through the reference too: .grad in the reference, more bytes "
            "held per step",
            ("make_reference_with_grad", "dpo_step_reference_with_grad"),
            caught="no_grad_reaches: a backward wrote a grad into reference"),
        "reference_train_mode": Mistake(
            "the reference frozen but left in train mode",
            "dropout in the reference's log-probs: the same pair gets another reference value on "
            "every call",
            ("make_reference_train_mode",),
            caught="runs_in_eval_mode: reference:"),
        "unmasked_logprobs": Mistake(
            "a completion's log-prob summed over every position, its padding included",
            "the padding's log-probs enter every margin: the policy drifts further from the "
            "pretrained model, ranks held-out pairs worse when they are scored with masks and, "
            "on some seeds, ends its completions sooner",
            ("dpo_step_unmasked_logprobs",),
            no_check="a sum over the wrong positions: a value, not a graph; the held-out "
                     "accuracy, scored with masks, measures it"),
    },
    budgets=tour_budgets(BY_MISTAKE, QUICK),
    headline=headline,
    figure=plots.curves_by_run(draw_curves, panels=3),
    figure_size=(12, 3.6),
    check=lambda s: "the reference got .grad" if s["reference_has_grad"] else None,
    smoke=("steps=4", "eval_every=2", "log_every=2", "pretrain_steps=20", "pairs=32",
           "held_out_pairs=16", "batch_size=8", "eval_prompts=8"),
    report=("reward_at_start", "reward", "held_out_accuracy", "exact_kl", "final_loss",
            "reference_noise", "reference_has_grad", "steps_per_sec"),
    order=10,
    gate=Gate(
        "pydoc, seeds 0-2",
        runs={m: Runs(m) for m in BY_MISTAKE},
        keys=("reward_at_start", "reward", "held_out_accuracy", "held_out_loss", "exact_kl",
              "length_at_start", "length", "final_loss", "pairs", "reference_noise",
              "reference_has_grad", "step_saved_bytes", "steps_per_sec"),
        criteria=(
            Criterion("the pattern's reward rises by >= 0.15 over the pretrained model's, its "
                      "held-out preference accuracy reaches 70% with an exact KL <= 2 nats per "
                      "character, and its reference is noiseless with no .grad", ("none",), each(
                          lambda r: r["reward"] >= r["reward_at_start"] + 0.15
                          and r["held_out_accuracy"] >= 0.7 and r["exact_kl"] <= 2.0
                          and r["reference_noise"] == 0 and not r["reference_has_grad"])),
            Criterion("reference_is_policy's held-out loss is log 2 with no margin positive, and "
                      "ends >= 1.3x the pattern's exact KL on the same seed",
                      ("none", "reference_is_policy"), each(
                          lambda p, m: abs(m["held_out_loss"] - math.log(2)) < 1e-5
                          and m["held_out_accuracy"] == 0
                          and m["exact_kl"] >= 1.3 * p["exact_kl"])),
            Criterion("reference_with_grad writes .grad into the reference and holds more bytes "
                      "per step", ("none", "reference_with_grad"), each(
                          lambda p, m: m["reference_has_grad"]
                          and m["step_saved_bytes"] > p["step_saved_bytes"])),
            Criterion("reference_train_mode's reference differs between two calls on the same "
                      "pairs", ("reference_train_mode",),
                      each(lambda r: r["reference_noise"] > 0)),
            Criterion("unmasked_logprobs ends with a larger exact KL and a lower held-out "
                      "preference accuracy (scored with masks) than the pattern on the same seed",
                      ("none", "unmasked_logprobs"),
                      each(lambda p, m: m["exact_kl"] > p["exact_kl"]
                           and m["held_out_accuracy"] < p["held_out_accuracy"]))),
        figure_runs=tuple(BY_MISTAKE),
        figure_title="dpo on pydoc, default config, seed 0"),
    measured=measured,
    size_keys=("batch_size", "completion_len", "pairs"),
)


if __name__ == "__main__":
    command_line(EXAMPLE, train)
