"""Gradient accumulation: where the gradient goes at step time. Right per micro-batch is not enough;
it has to be the full batch's gradient by the time `optimizer.step()` runs.

    tokens = all_reduce(sum of real tokens in this step's micro-batches)   # the count, first
    for i, micro in enumerate(micro_batches):
        with sync_if(model, last=i == n - 1):       # DDP's no_sync() but on the last: forward
                                                     # AND backward inside
            loss = token_loss_sum(model, micro) * world_size / tokens
            scaler.scale(loss).backward()
    scaler.unscale_(optimizer)                                  # before clipping
    clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer); scaler.update()

The task: a causal convolutional character model on CPython's reference docs (tbptt's text), on
sequences of unequal lengths padded into micro-batches, so that the token count of each one
differs. One process or several (torchrun, gloo on CPU), through the same train(); `amp=true` runs
autocast with a GradScaler (fp16 on CUDA, bf16 on CPU, where fp16 is about 70x slower).

The mistakes (`mistake=`), and what they cost (scripts/gates.py accumulate):

- mean_of_means: each micro-batch's mean loss, averaged: a short sequence's tokens weigh more
  than a long one's, and the gradient is not the full batch's (exact only when every micro-batch
  holds the same number of tokens).
- sync_every_micro_batch: no no_sync: DDP all-reduces after every micro-batch's backward, not once
  per step.
- no_sync_backward_only: no_sync around the backward only: the forward outside it already armed
  DDP's reducer, so the syncs still happen.
- clip_scaled: the gradient clipped while still multiplied by the GradScaler's scale: the
  optimizer sees a gradient about `scale` times too small, and SGD's training halts (Adam's
  normalisation undoes a uniform shrink, up to its eps, and hides it).

Run: python -m gallery.accumulate seed=0 out_dir=/tmp/accumulate
     torchrun --standalone --nproc_per_node=2 -m gallery.accumulate out_dir=/tmp/accumulate2
"""

from __future__ import annotations

import contextlib
import os
from collections import namedtuple
from dataclasses import dataclass, field

import torch
import torch.distributed
import torch.nn.functional as F
from torch import nn

from gallery.core import dist, plots
from gallery.core.cli import command_line
from gallery.core.config import (
    BaseConfig,
    register_schema,
    require_choice,
    require_positive,
    require_range,
    validate_base,
)
from gallery.core.errors import ConfigError
from gallery.core.loop import Counters, Loop
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
from gallery.data.text import CharVocab, TextSource, load_text

PAD = -100  # the targets' padding: cross_entropy's ignore_index

# --- config schema -----------------------------------------------------------------------------

@register_schema("accumulate")
@dataclass
class AccumulateConfig(BaseConfig):
    data: TextSource = field(default_factory=TextSource)
    steps: int = 300  # optimizer steps
    micro_batches: int = 4  # per optimizer step, on each process
    micro_batch_size: int = 8  # sequences per micro-batch
    min_len: int = 8  # sequence lengths are drawn uniformly from [min_len, max_len]
    max_len: int = 128
    optimizer: str = "sgd"  # sgd (momentum 0.9) | adam: Adam's normalisation undoes a uniform
    # shrink of the gradient (up to its eps), so clip_scaled's cost shows under SGD
    lr: float = 0.5
    max_norm: float = 1.0  # gradient clipping
    amp: bool = False  # autocast with a GradScaler: fp16 on CUDA, bf16 on CPU (fp16 is ~70x slower
    # there)
    hidden: int = 64
    log_every: int = 25
    eval_every: int = 100
    ckpt_every: int = 100


def validate(cfg: AccumulateConfig) -> None:
    validate_base(cfg, BY_MISTAKE)
    require_choice(cfg, "data.name", ["pydoc", "file", "tiny_shakespeare", "wikitext2"])
    require_choice(cfg, "optimizer", ["sgd", "adam"])
    require_positive(cfg, "micro_batches", "micro_batch_size", "lr", "max_norm", "hidden")
    require_range(cfg, "max_len", 2, 4096)
    require_range(cfg, "min_len", 2, 4096)
    if cfg.min_len > cfg.max_len:
        raise ConfigError(f"min_len={cfg.min_len} is above max_len={cfg.max_len}: the lengths are "
                          "drawn from [min_len, max_len]")
    # a mistake whose consequence these settings cannot show would print the pattern's numbers
    if cfg.mistake == "clip_scaled" and not cfg.amp:
        raise ConfigError("mistake=clip_scaled needs amp=true: without a GradScaler there is no "
                          "scale to clip, and the run would be the pattern's")
    if EXAMPLE.mistakes.get(cfg.mistake, None) is not None and \
            EXAMPLE.mistakes[cfg.mistake].needs and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise ConfigError(f"mistake={cfg.mistake} needs {EXAMPLE.mistakes[cfg.mistake].needs}: in "
                          f"one process there is no all-reduce, and the run would be the pattern's")


# --- model and data -----------------------------------------------------------------------------

class CausalConvLM(nn.Module):
    """Each character predicted from the few before it: two causal convolutions."""

    def __init__(self, vocab: int, hidden: int, width: int = 4):
        super().__init__()
        self.embed, self.pad = nn.Embedding(vocab, hidden), width - 1
        self.convs = nn.ModuleList([nn.Conv1d(hidden, hidden, width) for _ in range(2)])
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (N, T) -> logits (N, T, vocab)
        h = self.embed(ids).transpose(1, 2)
        for conv in self.convs:
            h = F.relu(conv(F.pad(h, (self.pad, 0))))
        return self.head(h.transpose(1, 2))


def micro_batch(ids, n, min_len, max_len, generator) -> dict:
    """`n` sequences of random lengths from the text, padded to the longest."""
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=generator)
    starts = torch.randint(len(ids) - max_len - 1, (n,), generator=generator)
    inputs = torch.zeros(n, int(lengths.max()), dtype=torch.long)
    targets = torch.full_like(inputs, PAD)
    for i, (s, n_i) in enumerate(zip(starts.tolist(), lengths.tolist())):
        inputs[i, :n_i], targets[i, :n_i] = ids[s:s + n_i], ids[s + 1:s + n_i + 1]
    return {"inputs": inputs, "targets": targets}


# --- the pattern --------------------------------------------------------------------------------

def world_size():
    """The processes training together: 1 without a process group."""
    grouped = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_world_size() if grouped else 1


def token_loss_sum(model, micro, pad_id=-100):
    """The summed loss of the micro-batch's real tokens (padding, `pad_id`, ignored)."""
    logits = model(micro["inputs"])
    return F.cross_entropy(logits.flatten(0, 1).float(), micro["targets"].flatten(),
                           ignore_index=pad_id, reduction="sum")


def step_tokens(micro_batches, pad_id=-100):
    """The real tokens of the whole step, on every process: the divisor, known before any
    backward."""
    tokens = torch.tensor(float(sum(int((m["targets"] != pad_id).sum()) for m in micro_batches)))
    if world_size() > 1:
        torch.distributed.all_reduce(tokens)
    return tokens


def sync_if(model, last):
    """DDP's no_sync() for every micro-batch but the last, whose backward then all-reduces the
    summed gradient once; nothing to skip without DDP. (nanoGPT sets
    `model.require_backward_grad_sync = last` instead: the same switch, but an attribute DDP keeps
    for itself, where no_sync() is its documented API.)"""
    return contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()


def accumulate_grads(model, micro_batches, scaler, autocast):
    """The full batch's gradient, summed into .grad micro-batch by micro-batch; under DDP synced
    once, with the last micro-batch's backward."""
    tokens, world = step_tokens(micro_batches), world_size()
    for i, micro in enumerate(micro_batches):
        with sync_if(model, last=i == len(micro_batches) - 1):  # PATTERN: forward AND backward
            with autocast():
                loss = token_loss_sum(model, micro) * world / tokens  # PATTERN: one divisor
            scaler.scale(loss).backward()
    return tokens


def clip_and_step(model, optimizer, scaler, max_norm):
    """Unscale, then clip, then step: the clip sees the gradient the optimizer will use."""
    scaler.unscale_(optimizer)  # PATTERN: before clipping
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return norm


# --- the mistakes -------------------------------------------------------------------------------

def accumulate_grads_mean_of_means(model, micro_batches, scaler, autocast):
    tokens = step_tokens(micro_batches)
    for i, micro in enumerate(micro_batches):
        with sync_if(model, last=i == len(micro_batches) - 1):
            with autocast():
                loss = token_loss_sum(model, micro) / int((micro["targets"] != PAD).sum()) \
                    / len(micro_batches)  # MISTAKE: each micro-batch's mean, averaged
            scaler.scale(loss).backward()
    return tokens


def accumulate_grads_sync_every_micro_batch(model, micro_batches, scaler, autocast):
    tokens, world = step_tokens(micro_batches), world_size()
    for micro in micro_batches:
        with contextlib.nullcontext():  # MISTAKE: never no_sync: an all-reduce per backward
            with autocast():
                loss = token_loss_sum(model, micro) * world / tokens
            scaler.scale(loss).backward()
    return tokens


def accumulate_grads_no_sync_backward_only(model, micro_batches, scaler, autocast):
    tokens, world = step_tokens(micro_batches), world_size()
    for i, micro in enumerate(micro_batches):
        with autocast():  # MISTAKE: the forward outside no_sync
            loss = token_loss_sum(model, micro) * world / tokens
        with sync_if(model, last=i == len(micro_batches) - 1):
            scaler.scale(loss).backward()
    return tokens


def clip_and_step_clip_scaled(model, optimizer, scaler, max_norm):
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # MISTAKE: still scaled
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return norm


# the functions of a step that a mistake can swap, by name
AccumulateSteps = namedtuple("AccumulateSteps", ["accumulate", "step"])
BY_MISTAKE = {
    "none": AccumulateSteps(accumulate_grads, clip_and_step),
    "mean_of_means": AccumulateSteps(accumulate_grads_mean_of_means, clip_and_step),
    "sync_every_micro_batch": AccumulateSteps(accumulate_grads_sync_every_micro_batch,
                                              clip_and_step),
    "no_sync_backward_only": AccumulateSteps(accumulate_grads_no_sync_backward_only,
                                             clip_and_step),
    "clip_scaled": AccumulateSteps(accumulate_grads, clip_and_step_clip_scaled),
}


# --- measurement (off the training path) -------------------------------------------------------

def full_batch_grad(module, micro_batches) -> torch.Tensor:
    """The gradient of the mean token loss over every process's micro-batches at once, computed
    without DDP on each process (the reference the accumulated gradient must equal)."""
    everything = [m for rank_batches in dist.gather(micro_batches) for m in rank_batches]
    tokens = sum(int((m["targets"] != PAD).sum()) for m in everything)
    loss = sum(token_loss_sum(module, m) for m in everything) / tokens
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(module.parameters()))])


def relative_grad_error(module, model, micro_batches, accumulate) -> float:
    """||accumulated - full batch|| / ||full batch||, on these micro-batches (fp32, no step)."""
    reference = full_batch_grad(module, micro_batches)
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    accumulate(model, micro_batches, disabled, contextlib.nullcontext)
    got = torch.cat([p.grad.flatten() for p in module.parameters()])
    module.zero_grad(set_to_none=True)
    return float((got - reference).norm() / reference.norm())


def watch_grad_norm(optimizer, module) -> Counters:
    """The gradient norm each optimizer.step() is handed (after any unscale and clip): the last,
    and a running sum over the run's steps that a checkpoint keeps."""
    seen = Counters(last=0.0, total=0.0, steps=0)

    def record(*_) -> None:
        seen.last = float(torch.cat([p.grad.flatten() for p in module.parameters()]).norm())
        seen.total, seen.steps = seen.total + seen.last, seen.steps + 1

    optimizer.register_step_pre_hook(record)
    return seen


@torch.no_grad()
def validation_loss(module, batches) -> float:
    tokens = sum(int((m["targets"] != PAD).sum()) for m in batches)
    return float(sum(token_loss_sum(module, m) for m in batches) / tokens)


def draw_loss(ax, evals: list[dict], label: str) -> None:
    ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], marker="o", ms=3,
            label=label)
    ax.set(xlabel="optimizer step", ylabel="validation loss (nats per character)")
    ax.legend(fontsize=7)


# --- training loop ------------------------------------------------------------------------------

def train(cfg) -> dict:
    cfg, device = prepare(cfg, validate, single_thread=lambda c: True)
    text = load_text(cfg.data.name, cfg.data.path, cfg.data.root)
    vocab = CharVocab.build(text)
    ids, steps = vocab.encode(text), BY_MISTAKE[cfg.mistake]
    module = CausalConvLM(len(vocab), cfg.hidden).to(device)
    model = dist.wrap(module, device)
    optimizer = torch.optim.SGD(module.parameters(), lr=cfg.lr, momentum=0.9) \
        if cfg.optimizer == "sgd" else torch.optim.Adam(module.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp)
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    autocast = (lambda: torch.autocast(device.type, dtype=half)) if cfg.amp \
        else contextlib.nullcontext
    data_rng = torch.Generator().manual_seed(cfg.seed + dist.rank())  # each rank its own
    batch = lambda rng: [micro_batch(ids, cfg.micro_batch_size, cfg.min_len,  # noqa: E731
                                     cfg.max_len, rng) for _ in range(cfg.micro_batches)]
    held_out = batch(torch.Generator().manual_seed(10_000))
    grad_error = relative_grad_error(module, model, batch(data_rng), steps.accumulate)
    syncs, seen = dist.AllReduceCounter(model, step=optimizer), watch_grad_norm(optimizer, module)
    stateful = {"model": module, "optimizer": optimizer, "scaler": scaler, "data_rng": data_rng,
                "seen": seen}
    probe = Probe(device)
    with Loop(cfg, EXAMPLE.name, stateful, device, cfg.data.name) as loop:
        if loop.finished_summary:
            return loop.finished_summary
        for _ in loop:
            with probe.step(sampled=False):
                micro_batches = [{k: v.to(device) for k, v in m.items()} for m in batch(data_rng)]
                steps.accumulate(model, micro_batches, scaler, autocast)
                norm = steps.step(module, optimizer, scaler, cfg.max_norm)
            if loop.due(cfg.log_every):
                loop.log(losses={"grad_norm": norm}, optimizer_grad_norm=seen.last)
            if loop.due(cfg.eval_every, final=True):
                loop.evaluated(val_loss=validation_loss(module, held_out))
        plots.figure(loop.run.path("val_loss.png"), draw_loss, loop.evals, loop.label)
        return loop.summary(
            val_loss=loop.evals[-1]["val_loss"], curve=loop.evals, grad_rel_error=grad_error,
            optimizer_grad_norm=seen.total / max(seen.steps, 1),
            allreduces_per_step=syncs.per_step("step"),
            steps_per_sec=probe.units_per_sec,
            **dist.ddp_report({"model": module}, probe.record))


# --- what the tour, `show`, the README and the hero figure read ----------------------------------

def headline(s: dict) -> str:
    per_step = s["allreduces_per_step"]
    return (f"accumulated gradient vs the full batch's: relative error {s['grad_rel_error']:.2g}; "
            f"gradient norm the optimizer saw {s['optimizer_grad_norm']:.3g}; validation loss "
            f"{s['val_loss']:.3f}" + (f"; all-reduces per step {per_step:g}"
                                      if s.get("world_size") else ""))


def measured(gate: dict, bench: dict) -> Measured:
    runs = gate["runs"]
    error = {m: avg(runs[m], "grad_rel_error") for m in ("none", "mean_of_means")}
    syncs = {m: avg(runs[f"{m} 2 processes"], "allreduces_per_step")
             for m in ("none", "sync_every_micro_batch", "no_sync_backward_only")}
    loss = {m: avg(runs[f"{m} amp"], "val_loss") for m in ("none", "clip_scaled")}
    return Measured(
        (f"gradient equal to the full batch's (relative error {error['none']:.1g}); "
         f"{syncs['none']:g} all-reduce per step on 2 processes",
         f"mean_of_means: {error['mean_of_means']:.1%} off; sync_every_micro_batch: "
         f"{syncs['sync_every_micro_batch']:g} all-reduces per step; clip_scaled: validation "
         f"loss {loss['clip_scaled']:.2f} vs {loss['none']:.2f}"),
        Panel("validation loss, autocast with a GradScaler", loss["none"], loss["clip_scaled"],
              "clip_scaled"),
        cost_of("sync_every_micro_batch", runs["none 2 processes"],
                runs["sync_every_micro_batch 2 processes"],
                "scripts/gates.py accumulate, 2 gloo processes on this CPU, seed 0",
                "steps_per_sec"))


def gate_figure(rows: dict, first: dict, fig) -> None:
    """Seed 0: the validation loss under autocast with a GradScaler, the pattern against
    clip_scaled; and the accumulated gradient's error against the full batch's as the lengths in
    a micro-batch grow unequal."""
    fig.set_size_inches(10, 3.4)
    ax = fig.add_subplot(1, 2, 1)
    for label in ("none amp", "clip_scaled amp"):
        draw_loss(ax, first[label]["curve"], label.replace("none", "pattern"))
    ax = fig.add_subplot(1, 2, 2)
    for mistake in ("none", "mean_of_means"):
        ax.plot(range(len(SPREADS)), [rows[f"{mistake} {s}"][0]["grad_rel_error"] for s in SPREADS],
                marker="o", label=plots.label(mistake))
    ax.set_xticks(range(len(SPREADS)), [s.removeprefix("lengths ") for s in SPREADS])
    ax.set(yscale="log", xlabel="sequence lengths in a micro-batch",
           ylabel="relative error vs the full batch")
    ax.legend(fontsize=7)


# The gate's spreads of lengths in a micro-batch: equal, then wider and wider (one step each).
SPREADS = {f"lengths {a}-{b}": (f"min_len={a}", f"max_len={b}")
           for a, b in ((64, 64), (32, 96), (8, 128), (2, 128))}
SHORT = ("steps=100", "eval_every=100")
QUICK = ["steps=20", "eval_every=20", "log_every=10"]
TWO_PROCESSES = ("two processes: torchrun --standalone --nproc_per_node=2 -m gallery.accumulate "
                 "mistake=<this mistake>")
EXAMPLE = Example(
    name="accumulate",
    pattern="where the gradient goes at step time: one token-weighted divisor, no_sync around "
            "forward and backward, unscale_ before clipping",
    pattern_functions=("world_size", "token_loss_sum", "step_tokens", "sync_if",
                       "accumulate_grads", "clip_and_step"),
    mistakes={
        "mean_of_means": Mistake(
            "each micro-batch's mean loss, averaged over the micro-batches",
            "not the full batch's gradient: a short sequence's tokens weigh more than a long "
            "one's (exact only when every micro-batch holds the same number of tokens)",
            ("accumulate_grads_mean_of_means",),
            caught="same_grad_as: the block's gradient is",
        ),
        "sync_every_micro_batch": Mistake(
            "no no_sync: DDP all-reduces after every micro-batch",
            "one all-reduce per micro-batch instead of one per step (needs a process group to see)",
            ("accumulate_grads_sync_every_micro_batch",),
            no_check="only a process group shows it: the all-reduces per step, counted by a DDP "
                     "communication hook under torchrun",
            needs=TWO_PROCESSES,
        ),
        "no_sync_backward_only": Mistake(
            "no_sync around the backward only, the forward outside it",
            "the forward already armed DDP's reducer: the all-reduces still happen",
            ("accumulate_grads_no_sync_backward_only",),
            no_check="only a process group shows it: the all-reduces per step, counted by a DDP "
                     "communication hook under torchrun",
            needs=TWO_PROCESSES,
        ),
        "clip_scaled": Mistake(
            "the gradient clipped before scaler.unscale_",
            "the clip sees the scaled gradient: the optimizer gets one about `scale` times too "
            "small, and SGD's training halts (Adam's normalisation hides it)",
            ("clip_and_step_clip_scaled",),
            no_check="a value, not a graph: the gradient norm the optimizer sees (in the summary) "
                     "catches it",
        ),
    },
    budgets=tour_budgets(BY_MISTAKE, QUICK, clip_scaled=["amp=true"]),
    headline=headline,
    figure=plots.curves_by_run(draw_loss),
    check=lambda s: None if s["grad_rel_error"] < 1e-4 else "the accumulated gradient is not the "
                                                             "full batch's",
    smoke=("steps=10", "eval_every=5", "log_every=5", "micro_batch_size=4", "max_len=32"),
    report=("grad_rel_error", "optimizer_grad_norm", "val_loss", "allreduces_per_step",
            "steps_per_sec"),
    order=12,
    gate=Gate(
        "pydoc, seeds 0-2 in one process; one step of seed 0 at each spread of lengths; 100 steps "
        "of seed 0 on 2 gloo processes",
        runs={"none": Runs(), "mean_of_means": Runs("mean_of_means"),
              **{f"{m} {spread}": Runs(m, (0,), ("steps=1", *lengths))
                 for m in ("none", "mean_of_means") for spread, lengths in SPREADS.items()},
              "none amp": Runs(overrides=("amp=true",)),
              "clip_scaled amp": Runs("clip_scaled", overrides=("amp=true",)),
              **{f"{m} 2 processes": Runs(m, (0,), SHORT, processes=2)
                 for m in ("none", "sync_every_micro_batch", "no_sync_backward_only")}},
        keys=("grad_rel_error", "optimizer_grad_norm", "val_loss", "allreduces_per_step",
              "steps_per_sec"),
        criteria=(
            Criterion("the pattern's accumulated gradient equals the full batch's (relative error "
                      "<= 1e-5) on 1 and 2 processes, with 1 all-reduce per step on 2",
                      ("none", "none 2 processes"), lambda one, two: all(
                          r["grad_rel_error"] <= 1e-5 for r in one + two)
                      and all(r["allreduces_per_step"] == 1 for r in two)),
            Criterion("mean_of_means is off by >= 1% with unequal lengths", ("mean_of_means",),
                      each(lambda r: r["grad_rel_error"] >= 0.01)),
            Criterion("sync_every_micro_batch and no_sync_backward_only make >= 2x the "
                      "all-reduces", ("none 2 processes", "sync_every_micro_batch 2 processes",
                                      "no_sync_backward_only 2 processes"), each(
                          lambda p, *ms: all(m["allreduces_per_step"]
                                             >= 2 * p["allreduces_per_step"] for m in ms))),
            Criterion("clip_scaled (with a GradScaler) ends with a validation loss >= 0.3 nats "
                      "above the pattern's", ("none amp", "clip_scaled amp"),
                      each(lambda p, m: m["val_loss"] >= p["val_loss"] + 0.3))),
        rows_figure=gate_figure, figure_title="accumulate on pydoc, seed 0"),
    measured=measured,
    size_keys=("micro_batch_size", "max_len"),
)


if __name__ == "__main__":
    command_line(EXAMPLE, train)
