"""Mimic a frozen teacher: the smallest example, the one the "Add an example" page
builds step by step (tests/test_recipe.py copies it into a scratch checkout and sees it appear
everywhere).

    teacher = copy.deepcopy(model).requires_grad_(False).eval()   # never trained
    with torch.no_grad():
        target = teacher(x)                                        # a constant
    loss = mse(student(x), target)

The mistake (`mistake=`), and what it costs:

- teacher_grad: the teacher keeps requires_grad and its forward runs with grad: every backward
  writes .grad into the teacher and holds its activations for nothing.

Run: python -m gallery.mimic seed=0 out_dir=/tmp/mimic
"""

from __future__ import annotations

import copy
from collections import namedtuple
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gallery.core.cli import command_line
from gallery.core.config import BaseConfig, register_schema, require_positive, validate_base
from gallery.core.loop import Loop
from gallery.core.probes import Probe
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
)
from gallery.core.setup import prepare

# --- config schema -----------------------------------------------------------------------------

@register_schema("mimic")
@dataclass
class MimicConfig(BaseConfig):
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-2
    hidden: int = 32
    log_every: int = 50
    eval_every: int = 100
    ckpt_every: int = 100


def validate(cfg: MimicConfig) -> None:
    validate_base(cfg, BY_MISTAKE)
    require_positive(cfg, "lr", "hidden", "batch_size")


def mlp(hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, hidden), nn.Tanh(), nn.Linear(hidden, 4))


# --- the pattern --------------------------------------------------------------------------------

def make_teacher(model):
    """The teacher: its own weights, never trained, in eval mode."""
    return copy.deepcopy(model).requires_grad_(False).eval()  # PATTERN: frozen


def mimic_step(student, teacher, optimizer, x):
    """One student step towards the teacher's outputs, which are constants."""
    with torch.no_grad():  # PATTERN: the target holds no graph
        target = teacher(x)
    loss = F.mse_loss(student(x), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


# --- the mistakes -------------------------------------------------------------------------------

def make_teacher_grad(model):
    return copy.deepcopy(model).eval()  # MISTAKE: the copy still requires grad


def mimic_step_teacher_grad(student, teacher, optimizer, x):
    target = teacher(x)  # MISTAKE: forward with grad, through a teacher that requires it
    loss = F.mse_loss(student(x), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


# the functions of a step that a mistake can swap, by name
MimicSteps = namedtuple("MimicSteps", ["make_teacher", "step"])
BY_MISTAKE = {"none": MimicSteps(make_teacher, mimic_step),
              "teacher_grad": MimicSteps(make_teacher_grad, mimic_step_teacher_grad)}


# --- training loop ------------------------------------------------------------------------------

def train(cfg) -> dict:
    cfg, device = prepare(cfg, validate, single_thread=lambda c: True)
    make, step = BY_MISTAKE[cfg.mistake]
    teacher = make(mlp(cfg.hidden)).to(device)
    student = mlp(cfg.hidden).to(device)
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    inputs = torch.Generator().manual_seed(cfg.seed)
    held_out = torch.randn(512, 8, generator=torch.Generator().manual_seed(1)).to(device)
    stateful = {"student": student, "teacher": teacher, "optimizer": optimizer}
    probe = Probe(device)  # steps per second, from the steps it does not measure
    mse = lambda: float(F.mse_loss(student(held_out), teacher(held_out)))  # noqa: E731
    with torch.no_grad():
        mse_at_start = mse()  # before any step
    with Loop(cfg, EXAMPLE.name, stateful, device) as loop:
        if loop.finished_summary:
            return loop.finished_summary
        for _ in loop:
            with probe.step(sampled=False):
                loss = step(student, teacher, optimizer,
                            torch.randn(cfg.batch_size, 8, generator=inputs).to(device))
            if loop.due(cfg.log_every):
                loop.log(losses={"mse": loss})
            if loop.due(cfg.eval_every, final=True):
                with torch.no_grad():
                    loop.evaluated(mse=mse())
        return loop.summary(
            steps=cfg.steps, mse=loop.evals[-1]["mse"], mse_at_start=mse_at_start,
            teacher_has_grad=any(p.grad is not None for p in teacher.parameters()),
            steps_per_sec=probe.units_per_sec, curve=loop.evals)


# --- what the tour, the README, the hero figure, the gates and the check table read -----------

def headline(s: dict) -> str:
    return f"held-out MSE {s['mse']:.4f}; teacher .grad written: {s['teacher_has_grad']}"


def tour_figure(runs: dict, fig) -> None:
    ax = fig.add_subplot(1, 1, 1)
    for mistake, s in runs.items():
        ax.plot([e["step"] for e in s["curve"]], [e["mse"] for e in s["curve"]], label=mistake)
    ax.set(xlabel="step", ylabel="held-out MSE", yscale="log")
    ax.legend(fontsize=8)


def measured(gate: dict, bench: dict) -> Measured:
    runs = gate["runs"]
    pattern, mistake = (avg(runs[m], "mse") for m in ("none", "teacher_grad"))
    return Measured(
        (f"held-out MSE {pattern:.4f}",
         f"teacher_grad: .grad in the teacher: {runs['teacher_grad'][0]['teacher_has_grad']}"),
        Panel("held-out MSE", pattern, mistake, "teacher_grad"),
        Cost("teacher_grad", avg(runs["none"], "steps_per_sec")
             / avg(runs["teacher_grad"], "steps_per_sec"), None,
             "time: scripts/gates.py mimic, seed 0"))


EXAMPLE = Example(
    name="mimic",
    pattern="the teacher's outputs are constants: a frozen copy, its forward under no_grad",
    pattern_functions=("make_teacher", "mimic_step"),
    mistakes={
        "teacher_grad": Mistake(
            "the teacher keeps requires_grad and its forward runs with grad",
            "every backward writes .grad into the teacher",
            ("make_teacher_grad", "mimic_step_teacher_grad"),
            caught="no_grad_reaches: a backward wrote a grad into teacher",
        ),
    },
    budgets={"full": {"none": [], "teacher_grad": []},
             "quick": {"none": ["steps=100"], "teacher_grad": ["steps=100"]}},
    headline=headline,
    figure=tour_figure,
    check=lambda s: "the teacher got .grad" if s["teacher_has_grad"] else None,
    smoke=("steps=20", "eval_every=10", "log_every=10"),
    report=("mse", "teacher_has_grad", "steps_per_sec"),
    order=50,
    gate=Gate(
        "seed 0",
        runs={"none": Runs(seeds=(0,)), "teacher_grad": Runs("teacher_grad", (0,))},
        keys=("mse", "mse_at_start", "teacher_has_grad", "steps_per_sec"),
        criteria=(
            Criterion("the student's held-out MSE falls below half of where it started, with no "
                      ".grad in the teacher", ("none",), each(
                          lambda r: r["mse"] < 0.5 * r["mse_at_start"]
                          and not r["teacher_has_grad"])),
            Criterion("teacher_grad writes .grad into the teacher", ("teacher_grad",),
                      each(lambda r: r["teacher_has_grad"])))),
    measured=measured,
)


if __name__ == "__main__":
    command_line(EXAMPLE, train)
