"""Knowledge distillation: a frozen teacher, its soft targets computed without a graph, and
Hinton's loss with its T² factor.

    teacher = pretrained.requires_grad_(False).eval()        # frozen, and in eval mode
    with torch.no_grad():
        teacher_logits = teacher(x)                          # soft targets: data
    loss = (1 - alpha) * CE(student(x), y)                   # the few labels
           + alpha * T² * KL(softmax(teacher/T) || softmax(student/T))

Dividing the logits by T softens both distributions, and scales the soft term's gradient by 1/T²;
the T² puts it back, so that alpha means the same at every temperature.

The task: scikit-learn's digits. The teacher, a wider MLP with BatchNorm and Dropout, is pretrained
on every training label (and cached). The student, a small MLP, gets 5 labels per class; the soft
term uses every training image. The student trained alone on its labels (alpha=0) is the baseline
that distillation must beat (scripts/gates.py distill measures both).

The mistakes (`mistake=`), and what they cost:

- teacher_train_mode: the teacher frozen but left in train mode: its dropout makes the targets
  noisy, and its BatchNorm normalises by each batch and moves its running statistics, so the
  teacher changes during distillation.
- teacher_with_grad: the teacher still requires grad and its forward runs with grad: each backward
  runs through the teacher too (more bytes held, more time) and writes .grad into it.
- no_t_squared: the soft term without T²: its gradient is 1/T² too small (1/16 at T=4). Under
  SGD the whole soft gradient shrinks with it. Under Adam, which rescales every gradient, only the
  balance between the two terms changes, and once the few labels are fit the soft term is all
  that is left: on this task it costs nothing measurable (the gate measures it beside the
  pattern), which is why the mistake survives in so much code.
- teacher_in_optimizer: the teacher's parameters handed to the student's optimizer (with its
  forward under grad): the teacher drifts towards the student.

Soft targets computed with grad from a teacher that is frozen (requires_grad_(False)) cost
nothing: no tensor in its forward requires grad, so no graph is built. torch.no_grad() matters
when the teacher requires grad, which is teacher_with_grad.

Run: python -m gallery.distill seed=0 out_dir=/tmp/distill
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gallery.core import plots
from gallery.core.checkpoint import cache_folder, trained_once
from gallery.core.cli import command_line
from gallery.core.config import (
    BaseConfig,
    register_schema,
    require_choice,
    require_positive,
    require_range,
    validate_base,
)
from gallery.core.loop import Loop
from gallery.core.probes import Probe, state_hash
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
from gallery.core.run import progress
from gallery.core.setup import prepare
from gallery.data import images
from gallery.nets import accuracy

# --- config schema -----------------------------------------------------------------------------

@dataclass
class DistillData(images.LabelledImages):  # name, root, image_size, limit, val_fraction, split_seed
    labels_per_class: int = 5  # the student's labels; the soft term uses every training image


@register_schema("distill")
@dataclass
class DistillConfig(BaseConfig):
    data: DistillData = field(default_factory=DistillData)
    steps: int = 1500
    batch_size: int = 128  # transfer images per step (the labelled few come too)
    lr: float = 3e-3
    hidden: int = 32  # the student's width
    temperature: float = 4.0  # T: both distributions softened by it
    alpha: float = 0.9  # the soft term's weight (0: the student alone, on its labels)
    teacher_hidden: int = 256
    teacher_dropout: float = 0.3
    teacher_steps: int = 1500  # the teacher's pretraining on every training label, cached
    teacher_dir: str = "${cache_dir:distill}"
    eval_every: int = 250
    log_every: int = 250
    ckpt_every: int = 500


def validate(cfg: DistillConfig) -> None:
    validate_base(cfg, BY_MISTAKE)
    require_choice(cfg, "data.name", images.LABELLED)
    require_positive(cfg, "lr", "hidden", "batch_size", "temperature", "teacher_hidden",
                     "teacher_steps", "data.limit", "data.labels_per_class")
    require_range(cfg, "alpha", 0.0, 1.0)
    # softer than this, the teacher's distribution is uniform to float precision: nothing to learn
    require_range(cfg, "temperature", 0.0, 100.0)
    require_range(cfg, "teacher_dropout", 0.0, 0.9)
    require_range(cfg, "data.val_fraction", 0.05, 0.9)


# --- models -------------------------------------------------------------------------------------

def teacher_net(n_in: int, hidden: int, n_classes: int, dropout: float) -> nn.Sequential:
    """The teacher: wider, with the two layers whose behaviour depends on the mode."""
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden),
                         nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))


def student_net(n_in: int, hidden: int, n_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_classes))


# --- the pattern --------------------------------------------------------------------------------

def make_teacher(model):
    """A trained model as a teacher: frozen, and in eval mode (dropout off, BatchNorm reads its
    running statistics)."""
    return model.requires_grad_(False).eval()  # PATTERN: both: no grad, and eval mode


def soft_targets(teacher, x):
    """The teacher's logits: data, with no graph behind them."""
    with torch.no_grad():  # PATTERN: the teacher's forward records nothing
        return teacher(x)


def distill_loss(student_logits, teacher_logits, labels, temperature, alpha):
    """Hinton's loss: cross-entropy on the labelled examples (label -1: none) plus T² times the KL
    between the softened distributions. A batch with no label (a transfer set) has no hard term."""
    hard = F.cross_entropy(student_logits, labels, ignore_index=-1, reduction="sum") / (
        labels >= 0).sum().clamp(min=1)  # PATTERN: 0, not 0/0, when no example is labelled
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1), reduction="batchmean",
                    log_target=True)
    return (1 - alpha) * hard + alpha * temperature**2 * soft  # PATTERN: T² restores the scale


def make_optimizer(student, lr):
    """The optimizer holds the student's parameters, and only those."""
    return torch.optim.Adam(student.parameters(), lr=lr)  # PATTERN: the student alone


# --- the mistakes -------------------------------------------------------------------------------

def make_teacher_train_mode(model):
    return model.requires_grad_(False)  # MISTAKE: frozen, but left in train mode


def make_teacher_with_grad(model):
    return model.eval()  # MISTAKE: in eval mode, but it still requires grad


def soft_targets_with_grad(teacher, x):
    return teacher(x)  # MISTAKE: the forward records a graph through the teacher


def distill_loss_no_t_squared(student_logits, teacher_logits, labels, temperature, alpha):
    hard = F.cross_entropy(student_logits, labels, ignore_index=-1, reduction="sum") / (
        labels >= 0).sum().clamp(min=1)
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1), reduction="batchmean",
                    log_target=True)
    return (1 - alpha) * hard + alpha * soft  # MISTAKE: no T²: the soft gradient is 1/T² too small


def make_optimizer_with_teacher(student, teacher, lr):
    params = [*student.parameters(), *teacher.parameters()]  # MISTAKE: the teacher's too
    return torch.optim.Adam(params, lr=lr)


# the functions of a run that a mistake can swap, by name; the loop hands make_optimizer both
# models, and the pattern's takes the student's parameters alone
DistillSteps = namedtuple("DistillSteps", ["make_teacher", "soft_targets", "distill_loss",
                                           "make_optimizer"])
PATTERN = DistillSteps(make_teacher, soft_targets, distill_loss,
                       lambda student, teacher, lr: make_optimizer(student, lr))
BY_MISTAKE = {
    "none": PATTERN,
    "teacher_train_mode": PATTERN._replace(make_teacher=make_teacher_train_mode),
    "teacher_with_grad": PATTERN._replace(make_teacher=make_teacher_with_grad,
                                          soft_targets=soft_targets_with_grad),
    "no_t_squared": PATTERN._replace(distill_loss=distill_loss_no_t_squared),
    "teacher_in_optimizer": PATTERN._replace(make_teacher=make_teacher_with_grad,
                                             soft_targets=soft_targets_with_grad,
                                             make_optimizer=make_optimizer_with_teacher),
}


# --- data, the teacher's pretraining, measurement (off the training path) ----------------------

def load_data(cfg):
    """(labelled x, y), every training image, (held-out x, y): a fixed split for every seed."""
    d = cfg.data
    x, y = images.labelled_tensors(d)
    xt, yt, xv, yv = images.stratified_split(x, y, d.val_fraction, d.split_seed, None)
    xl, yl, _, _ = images.stratified_split(xt, yt, 0.0, d.split_seed, d.labels_per_class,
                                             key="data.labels_per_class")
    return xl, yl, xt, yt, xv, yv


def pretrained_teacher(cfg, xt, yt, device) -> nn.Sequential:
    """The teacher, trained on every training label once per seed and shape, then cached."""
    shape = (xt.shape[1:], cfg.teacher_hidden, cfg.teacher_dropout, cfg.teacher_steps,
             cfg.data.name, cfg.data.val_fraction, cfg.data.split_seed)
    torch.manual_seed(cfg.seed)
    model = teacher_net(xt[0].numel(), cfg.teacher_hidden, int(yt.max()) + 1,
                        cfg.teacher_dropout).to(device)

    def train() -> dict:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        batches = images.IndexBatches(len(yt), 128, torch.Generator().manual_seed(cfg.seed))
        with progress(cfg.teacher_steps, "pretrain the teacher", cfg.progress) as bar:
            for _ in range(cfg.teacher_steps):
                i = next(batches).to(device)
                loss = F.cross_entropy(model(xt[i]), yt[i])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.update(1)
        optimizer.zero_grad(set_to_none=True)  # a teacher starts with no grad, cached or not
        return {"steps": cfg.teacher_steps}

    trained_once(cache_folder(cfg.teacher_dir, cfg.seed, shape), {"model": model}, train, device)
    return model


def draw_curves(ax, evals: list[dict], label: str) -> None:
    ax.plot([e["step"] for e in evals], [e["student_accuracy"] for e in evals], marker="o", ms=3,
            label=label)
    ax.set(xlabel="step", ylabel="student's held-out accuracy")
    ax.legend(fontsize=8)


# --- training loop ------------------------------------------------------------------------------

def train(cfg) -> dict:
    cfg, device = prepare(cfg, validate, single_thread=lambda c: c.data.name == "digits")
    xl, yl, xt, yt, xv, yv = (t.to(device) for t in load_data(cfg))
    steps = BY_MISTAKE[cfg.mistake]
    teacher = steps.make_teacher(pretrained_teacher(cfg, xt, yt, device))
    torch.manual_seed(cfg.seed)
    student = student_net(xt[0].numel(), cfg.hidden, int(yt.max()) + 1).to(device)
    optimizer = steps.make_optimizer(student, teacher, cfg.lr)
    batches = images.IndexBatches(len(yt), cfg.batch_size, torch.Generator().manual_seed(cfg.seed))
    unlabelled = torch.full((cfg.batch_size,), -1, device=device)
    teacher_at_start, teacher_accuracy = state_hash(teacher), accuracy(teacher, xv, yv)
    stateful = {"student": student, "teacher": teacher, "optimizer": optimizer,
                "batches": batches}
    probe = Probe(device, saved_bytes_name="step_saved_bytes")  # measured on log steps
    with Loop(cfg, EXAMPLE.name, stateful, device, cfg.data.name) as loop:
        if loop.finished_summary:
            return loop.finished_summary
        for _ in loop:
            transfer = xt[next(batches).to(device)]
            with probe.step(sampled=loop.sampled(cfg.log_every)):
                x = torch.cat([xl, transfer])
                y = torch.cat([yl, unlabelled[:len(transfer)]])
                teacher_logits = steps.soft_targets(teacher, x)
                loss = steps.distill_loss(student(x), teacher_logits, y, cfg.temperature,
                                          cfg.alpha)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if loop.due(cfg.log_every):
                loop.log(losses={"distill": loss.detach()})
            if loop.due(cfg.eval_every, final=True):
                loop.evaluated(student_accuracy=accuracy(student, xv, yv),
                               teacher_accuracy=accuracy(teacher, xv, yv))
        plots.figure(loop.run.path("accuracy.png"), draw_curves, loop.evals,
                     f"mistake={cfg.mistake}")
        last = loop.evals[-1]
        return loop.summary(
            data=cfg.data.name, steps=cfg.steps, labels=len(yl), alpha=cfg.alpha,
            temperature=cfg.temperature, final_loss=float(loss.detach()),
            student_accuracy=last["student_accuracy"],
            teacher_accuracy_at_start=teacher_accuracy, teacher_accuracy=last["teacher_accuracy"],
            teacher_changed=state_hash(teacher) != teacher_at_start,
            teacher_has_grad=any(p.grad is not None for p in teacher.parameters()),
            step_saved_bytes=probe.record["step_saved_bytes"],
            steps_per_sec=probe.units_per_sec, curve=loop.evals)


# --- what the tour and `python -m gallery show distill` read ---------------------------------

def headline(s: dict) -> str:
    return (f"student accuracy {s['student_accuracy']:.1%} ({s['labels']} labels, alpha "
            f"{s['alpha']:g}, loss at the last step {s['final_loss']:.3f}); teacher "
            f"{s['teacher_accuracy_at_start']:.1%} -> "
            f"{s['teacher_accuracy']:.1%}, changed: {s['teacher_changed']}, .grad written: "
            f"{s['teacher_has_grad']}; bytes a step holds for backward {s['step_saved_bytes']:,}")


def gate_figure(rows: dict, first: dict, fig) -> None:
    """The student's accuracy by run, mean over seeds with each seed as a dot; the student alone
    is the line distillation must clear."""
    ax = fig.add_subplot(1, 1, 1)
    labels = list(rows)
    for i, label in enumerate(labels):
        values = [r["student_accuracy"] for r in rows[label]]
        ax.bar(i, sum(values) / len(values), color="tab:green" if label == "none" else
               "tab:gray" if label == "student alone" else "tab:red")
        ax.scatter([i] * len(values), values, color="black", s=10, zorder=3)
    ax.axhline(avg(rows["student alone"], "student_accuracy"), color="gray", ls="--", lw=1)
    ax.set_xticks(range(len(labels)), [plots.label(n) for n in labels],
                  fontsize=8, rotation=15)
    ax.set(ylabel="student's held-out accuracy", ylim=(0.0, 1.0))


def measured(gate: dict, bench: dict) -> Measured:
    runs = gate["runs"]
    pattern, alone = (avg(runs[m], "student_accuracy") for m in ("none", "student alone"))
    drifted = avg(runs["teacher_in_optimizer"], "student_accuracy")
    return Measured(
        (f"student accuracy {pattern:.1%} with 5 labels per class (alone: {alone:.1%})",
         f"teacher_in_optimizer: the teacher drifts to "
         f"{avg(runs['teacher_in_optimizer'], 'teacher_accuracy'):.1%}, the student "
         f"{drifted:.1%}"),
        Panel("student's held-out accuracy", pattern, drifted, "teacher_in_optimizer"),
        cost_of("teacher_with_grad", runs["none"], runs["teacher_with_grad"],
                "scripts/gates.py distill, seeds 0-2", "steps_per_sec", "step_saved_bytes"))


QUICK = ["steps=150", "eval_every=75", "log_every=75", "teacher_steps=300"]
EXAMPLE = Example(
    name="distill",
    pattern="a frozen teacher in eval mode, soft targets under no_grad, Hinton's loss with T²",
    pattern_functions=("make_teacher", "soft_targets", "distill_loss", "make_optimizer"),
    mistakes={
        "teacher_train_mode": Mistake(
            "the teacher frozen (requires_grad_(False)) but left in train mode",
            "dropout makes its targets noisy, and BatchNorm's statistics move: the teacher "
            "changes during distillation",
            ("make_teacher_train_mode",),
            caught="runs_in_eval_mode: teacher:"),
        "teacher_with_grad": Mistake(
            "the teacher still requires grad, and its forward runs with grad",
            "every backward runs through the teacher too (more bytes, more time) and writes .grad "
            "into it",
            ("make_teacher_with_grad", "soft_targets_with_grad"),
            caught="no_grad_reaches: a backward wrote a grad into teacher"),
        "no_t_squared": Mistake(
            "the soft term without its T² factor",
            "its gradient is 1/T² too small (1/16 at T=4); under Adam only the balance of the two "
            "terms changes, and on this task the accuracy barely moves (measured)",
            ("distill_loss_no_t_squared",),
            no_check="a scale, not a graph: every tensor is where the pattern's is; the gate "
                     "measures the accuracy it costs"),
        "teacher_in_optimizer": Mistake(
            "the teacher's parameters handed to the student's optimizer, its forward with grad",
            "the teacher drifts towards the student: its own accuracy falls",
            ("make_teacher_with_grad", "soft_targets_with_grad", "make_optimizer_with_teacher"),
            caught="no_grad_reaches: a backward wrote a grad into teacher"),
    },
    budgets=tour_budgets(BY_MISTAKE, QUICK),
    headline=headline,
    figure=plots.curves_by_run(draw_curves),
    check=lambda s: None if not s["teacher_changed"] and not s["teacher_has_grad"]
    else "the teacher changed or got a grad",
    smoke=("steps=20", "eval_every=10", "log_every=10", "teacher_steps=20",
           "teacher_dir={tmp}/teacher"),
    report=("student_accuracy", "teacher_accuracy", "teacher_changed", "teacher_has_grad",
            "step_saved_bytes", "steps_per_sec"),
    order=10,
    gate=Gate(
        "digits with 5 labels per class, the default config, seeds 0-2, no_t_squared measured "
        "beside the others",
        runs={"none": Runs(), "student alone": Runs(overrides=("alpha=0",)),
              **{m: Runs(m) for m in BY_MISTAKE if m != "none"}},
        keys=("student_accuracy", "teacher_accuracy_at_start", "teacher_accuracy",
              "teacher_changed", "teacher_has_grad", "step_saved_bytes", "steps_per_sec"),
        criteria=(
            Criterion("the distilled student beats the student alone (alpha=0) by at least 5 "
                      "points on every seed, and leaves its teacher unchanged with no grad",
                      ("none", "student alone"), each(
                          lambda p, a: p["student_accuracy"] >= a["student_accuracy"] + 0.05
                          and not p["teacher_changed"] and not p["teacher_has_grad"])),
            Criterion("teacher_train_mode changes the teacher", ("teacher_train_mode",),
                      each(lambda r: r["teacher_changed"])),
            Criterion("teacher_with_grad writes .grad into it and holds more bytes per step",
                      ("none", "teacher_with_grad"), each(
                          lambda p, m: m["teacher_has_grad"]
                          and m["step_saved_bytes"] > p["step_saved_bytes"])),
            Criterion("teacher_in_optimizer moves it", ("teacher_in_optimizer",),
                      each(lambda r: r["teacher_changed"]))),
        rows_figure=gate_figure,
        figure_title="distill on digits (5 labels per class), seeds 0-2"),
    measured=measured,
)


if __name__ == "__main__":
    command_line(EXAMPLE, train)
