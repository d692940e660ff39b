"""EMA teacher: a frozen, averaged copy of the model, updated under no_grad with its BatchNorm
buffers, used to evaluate and as the teacher of a mean-teacher student.

    teacher = copy.deepcopy(student).requires_grad_(False).eval()   # never trained, never a graph
    loss = CE(student(labelled)) + w * mse(softmax(student(view1)), softmax(teacher(view2)))
    ...optimizer.step()
    sync_target(teacher, student, tau=1 - decay)      # under no_grad: parameters averaged,
                                                      # running statistics copied

The task: scikit-learn's digits with 10 labels per class and every other training image
unlabelled, a small BatchNorm MLP. It is the smallest task where all three mistakes show: the
averaged model beats the noisy student only when labels are few, and BatchNorm is what makes the
buffers matter.

The mistakes (`mistake=`), and what they cost:

- skip_buffers: only the parameters are averaged: the teacher normalises with the running
  statistics it was born with, so its accuracy (and the targets it gives the student) fall far
  below the pattern's.
- ema_with_grad: the average written outside no_grad: every update hangs one more node per
  parameter on a graph that nothing ever frees, so the teacher's graph grows with every step.
- teacher_requires_grad: the copy keeps requires_grad: the consistency loss backpropagates into
  the teacher, whose .grad fills up (never used, never zeroed) and every step holds the teacher's
  activations for a backward that only wastes time.

Run: python -m gallery.ema seed=0 out_dir=/tmp/ema
"""

from __future__ import annotations

import copy
from collections import namedtuple
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gallery.core import plots
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
from gallery.core.loop import Loop
from gallery.core.probes import Probe, graph_stats
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
    each,
    tour_budgets,
)
from gallery.core.setup import prepare
from gallery.data import images
from gallery.nets import accuracy, sync_target

# --- config schema -----------------------------------------------------------------------------

@dataclass
class EmaData(images.LabelledImages):  # name, root, image_size, limit, val_fraction, split_seed
    labels_per_class: int = 10  # the labelled few; the rest of the training split is unlabelled


@register_schema("ema")
@dataclass
class EmaConfig(BaseConfig):
    data: EmaData = field(default_factory=EmaData)
    steps: int = 1500
    batch_size: int = 128  # unlabelled images per step (all the labelled ones come too)
    lr: float = 3e-3
    hidden: int = 128
    ema_decay: float = 0.99
    consistency: float = 10.0  # the consistency weight, ramped up over the first `ramp` steps
    ramp: int = 300
    eval_every: int = 250
    log_every: int = 100
    ckpt_every: int = 500


def validate(cfg: EmaConfig) -> None:
    validate_base(cfg, BY_MISTAKE)
    require_choice(cfg, "data.name", images.LABELLED)
    require_positive(cfg, "lr", "hidden", "batch_size", "data.limit", "data.labels_per_class")
    require_non_negative(cfg, "consistency", "ramp")
    require_range(cfg, "ema_decay", 0.0, 1.0)
    require_range(cfg, "data.val_fraction", 0.05, 0.9)


# --- model --------------------------------------------------------------------------------------

def classifier(n_in: int, hidden: int, n_classes: int) -> nn.Sequential:
    """An MLP with BatchNorm: the running statistics are what an EMA copy must not forget."""
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, n_classes))


def views(x: torch.Tensor) -> torch.Tensor:
    """A mild random view of each image (crop, rotation, contrast, noise)."""
    return images.random_views(x, crop_scale=0.85, rotate=0.2, jitter=0.2, noise=0.1)


# --- the pattern --------------------------------------------------------------------------------

def make_ema(model):
    """The averaged copy: its own weights, no grad, eval mode (BatchNorm reads its buffers)."""
    return copy.deepcopy(model).requires_grad_(False).eval()  # PATTERN: never trained, no graph


def mean_teacher_step(student, teacher, optimizer, x_labelled, y_labelled, x_unlabelled,
                      weight, view):
    """One student step: cross-entropy on the labelled few, and consistency with the teacher's
    predictions on another view of every image. The classification and consistency losses."""
    x = torch.cat([x_labelled, x_unlabelled])
    logits = student(view(x))
    target = F.softmax(teacher(view(x)), dim=1)  # PATTERN: a frozen teacher: a constant target
    ce = F.cross_entropy(logits[:len(x_labelled)], y_labelled)
    consistency = F.mse_loss(F.softmax(logits, dim=1), target)
    optimizer.zero_grad(set_to_none=True)
    (ce + weight * consistency).backward()
    optimizer.step()
    return ce.detach(), consistency.detach()


# The EMA update is the gallery's one Polyak average, gallery.nets.sync_target (dqn and sac use it
# for their target networks): tau = 1 - decay, under no_grad, buffers copied.


# --- the mistakes -------------------------------------------------------------------------------

@torch.no_grad()
def sync_target_skip_buffers(target, online, tau=1.0):
    for t, o in zip(target.parameters(), online.parameters()):
        if tau >= 1.0:
            t.copy_(o)
        else:
            t.lerp_(o, tau)
    # MISTAKE: the buffers (BatchNorm's running statistics) are left as they were born


def sync_target_with_grad(target, online, tau=1.0):  # MISTAKE: outside no_grad
    for t, o in zip(target.parameters(), online.parameters()):
        if tau >= 1.0:
            t.copy_(o)
        else:
            t.lerp_(o, tau)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)


def make_ema_requires_grad(model):
    return copy.deepcopy(model).eval()  # MISTAKE: the copy still requires grad


# the functions of a step that a mistake can swap, by name
EmaSteps = namedtuple("EmaSteps", ["make_ema", "sync"])
BY_MISTAKE = {"none": EmaSteps(make_ema, sync_target),
              "skip_buffers": EmaSteps(make_ema, sync_target_skip_buffers),
              "ema_with_grad": EmaSteps(make_ema, sync_target_with_grad),
              "teacher_requires_grad": EmaSteps(make_ema_requires_grad, sync_target)}


# --- data and measurement (off the training path) ---------------------------------------------

def load_data(cfg):
    """(labelled x, y), unlabelled x, (held-out x, y): a fixed split for every run seed."""
    d = cfg.data
    x, y = images.labelled_tensors(d)
    xt, yt, xv, yv = images.stratified_split(x, y, d.val_fraction, d.split_seed, None)
    xl, yl, xu, _ = images.stratified_split(xt, yt, 0.0, d.split_seed, d.labels_per_class,
                                             key="data.labels_per_class")
    return xl, yl, xt, xv, yv


def graph_nodes(module) -> int:
    """Autograd nodes hanging off a module's parameters (0 for a module that holds no graph)."""
    return sum(graph_stats(p).nodes for p in module.parameters() if p.grad_fn is not None)


def draw_curves(ax, evals: list[dict], label: str) -> None:
    steps = [e["step"] for e in evals]
    line, = ax.plot(steps, [e["ema_accuracy"] for e in evals], marker="o", ms=3,
                    label=f"{label}: EMA")
    ax.plot(steps, [e["student_accuracy"] for e in evals], ls="--", color=line.get_color(),
            label=f"{label}: student")
    ax.set(xlabel="step", ylabel="held-out accuracy", ylim=(0, 1))
    ax.legend(fontsize=8)


# --- training loop ------------------------------------------------------------------------------

def train(cfg) -> dict:
    cfg, device = prepare(cfg, validate, single_thread=lambda c: c.data.name == "digits")
    xl, yl, xu, xv, yv = (t.to(device) for t in load_data(cfg))
    variant = BY_MISTAKE[cfg.mistake]
    student = classifier(xl[0].numel(), cfg.hidden, int(yl.max()) + 1).to(device)
    teacher = variant.make_ema(student)
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    batches = images.IndexBatches(len(xu), cfg.batch_size, torch.Generator().manual_seed(cfg.seed))
    stateful = {"student": student, "teacher": teacher, "optimizer": optimizer,
                "batches": batches}
    probe = Probe(device, saved_bytes_name="step_saved_bytes")  # measured on log steps
    with Loop(cfg, EXAMPLE.name, stateful, device, cfg.data.name) as loop:
        if loop.finished_summary:
            return loop.finished_summary
        for _ in loop:
            weight = cfg.consistency * min(1.0, loop.step / max(cfg.ramp, 1))
            with probe.step(sampled=loop.sampled(cfg.log_every)):
                ce, consistency = mean_teacher_step(student, teacher, optimizer, xl, yl,
                                                    xu[next(batches).to(device)], weight, views)
                variant.sync(teacher, student, tau=1 - cfg.ema_decay)
            if loop.due(cfg.log_every):
                loop.log(losses={"ce": ce, "consistency": consistency},
                         teacher_graph_nodes=graph_nodes(teacher))
            if loop.due(cfg.eval_every, final=True):
                loop.evaluated(ema_accuracy=accuracy(teacher, xv, yv),
                               student_accuracy=accuracy(student, xv, yv))
        plots.figure(loop.run.path("accuracy.png"), draw_curves, loop.evals,
                     f"mistake={cfg.mistake}")
        last = loop.evals[-1]
        return loop.summary(
            data=cfg.data.name, steps=cfg.steps, labels=len(yl),
            ema_accuracy=last["ema_accuracy"], student_accuracy=last["student_accuracy"],
            teacher_graph_nodes=graph_nodes(teacher),
            teacher_has_grad=any(p.is_leaf and p.grad is not None for p in teacher.parameters()),
            step_saved_bytes=probe.record["step_saved_bytes"],
            steps_per_sec=probe.units_per_sec, curve=loop.evals)


# --- what the tour and `python -m gallery show ema` read ------------------------------------

def headline(s: dict) -> str:
    return (f"held-out accuracy: EMA {s['ema_accuracy']:.1%}, student {s['student_accuracy']:.1%} "
            f"({s['labels']} labels); teacher graph nodes {s['teacher_graph_nodes']:,}; "
            f"teacher .grad written: {s['teacher_has_grad']}; bytes a step holds for backward "
            f"{s['step_saved_bytes']:,}")


def measured(gate: dict, bench: dict) -> Measured:
    runs = gate["runs"]
    ema, skipped = (avg(runs[m], "ema_accuracy") for m in ("none", "skip_buffers"))
    slower = (avg(runs["none 300 steps"], "steps_per_sec")
              / avg(runs["ema_with_grad"], "steps_per_sec"))
    return Measured(
        (f"EMA accuracy {ema:.1%} (student {avg(runs['none'], 'student_accuracy'):.1%}), 10 "
         "labels per class",
         f"skip_buffers: EMA accuracy {skipped:.1%}; ema_with_grad: {slower:.0f}x slower by step "
         "300"),
        Panel("EMA held-out accuracy", ema, skipped, "skip_buffers"),
        Cost("ema_with_grad", slower, avg(runs["ema_with_grad"], "step_saved_bytes")
             / avg(runs["none 300 steps"], "step_saved_bytes"),
             "scripts/gates.py ema, seeds 0-2, 300 steps each"))


SHORT = ("steps=300", "eval_every=100")


QUICK = ["steps=150", "eval_every=75", "ramp=50"]
EXAMPLE = Example(
    name="ema",
    pattern="an EMA copy, frozen and in eval mode, updated under no_grad with its buffers; it "
            "evaluates and teaches",
    pattern_functions=("make_ema", "mean_teacher_step", "sync_target"),
    mistakes={
        "skip_buffers": Mistake(
            "the EMA update averages the parameters and skips the buffers",
            "the teacher normalises with the BatchNorm statistics it was born with: its accuracy "
            "falls far below the pattern's",
            ("sync_target_skip_buffers",),
            caught="updated: the block left teacher (2.running_mean (buffer)",
        ),
        "ema_with_grad": Mistake(
            "the EMA update written outside no_grad",
            "every update adds a node per parameter to a graph nothing frees: the teacher's graph "
            "grows with every step",
            ("sync_target_with_grad",),
            caught="constant: teacher_weights[0] (grad_fn=",
        ),
        "teacher_requires_grad": Mistake(
            "the EMA copy made without requires_grad_(False)",
            "the consistency loss backpropagates into the teacher: .grad written there every "
            "step, and more bytes held for backward",
            ("make_ema_requires_grad",),
            caught="no_grad_reaches: a backward wrote a grad into teacher",
        ),
    },
    budgets=tour_budgets(BY_MISTAKE, QUICK),
    headline=headline,
    figure=plots.curves_by_run(draw_curves),
    check=lambda s: None if s["teacher_graph_nodes"] == 0 and not s["teacher_has_grad"]
    else "the teacher holds a graph or a grad",
    smoke=("steps=20", "eval_every=10", "log_every=10", "ramp=10"),
    report=("ema_accuracy", "student_accuracy", "teacher_graph_nodes", "teacher_has_grad",
            "step_saved_bytes", "steps_per_sec"),
    order=9,
    gate=Gate(
        "digits with 10 labels per class, the default config, seeds 0-2 (ema_with_grad 300 "
        "steps: it slows as it goes)",
        runs={"none": Runs(), "skip_buffers": Runs("skip_buffers"),
              "teacher_requires_grad": Runs("teacher_requires_grad"),
              "ema_with_grad": Runs("ema_with_grad", overrides=SHORT),
              "none 300 steps": Runs(overrides=SHORT)},
        keys=("ema_accuracy", "student_accuracy", "teacher_graph_nodes", "teacher_has_grad",
              "step_saved_bytes", "steps_per_sec"),
        criteria=(
            Criterion("the EMA teacher's held-out accuracy is at least 90% and at least the "
                      "student's less 2 points (7 of 359 images), with no graph and no .grad",
                      ("none",), each(lambda r: r["ema_accuracy"] >= 0.9
                                      and r["ema_accuracy"] >= r["student_accuracy"] - 0.02
                                      and r["teacher_graph_nodes"] == 0
                                      and not r["teacher_has_grad"])),
            Criterion("skip_buffers' EMA is at least 30 points below the pattern's",
                      ("none", "skip_buffers"),
                      each(lambda p, m: m["ema_accuracy"] <= p["ema_accuracy"] - 0.3)),
            Criterion("teacher_requires_grad writes .grad into the teacher and holds more bytes "
                      "per step", ("none", "teacher_requires_grad"), each(
                          lambda p, m: m["teacher_has_grad"]
                          and m["step_saved_bytes"] > p["step_saved_bytes"])),
            Criterion("ema_with_grad ends with a graph on the teacher", ("ema_with_grad",),
                      each(lambda r: r["teacher_graph_nodes"] > 0))),
        figure_runs=("none", "skip_buffers"),
        figure_title="ema on digits (10 labels per class), seed 0"),
    measured=measured,
)


if __name__ == "__main__":
    command_line(EXAMPLE, train)
