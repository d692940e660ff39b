"""MAML: where the graph must NOT be cut. The inner gradient keeps its graph, so the outer loss
differentiates through the inner step to the initialisation.

    params = dict(model.named_parameters())                       # the initialisation
    grads = autograd.grad(inner_loss, list(params.values()),      # a graph of its own
                          create_graph=True)
    fast = {k: p - alpha * g for (k, p), g in zip(params.items(), grads)}  # of the params
    outer = mse(functional_call(model, fast, x_query), y_query)   # backward reaches params
                                                                  # through g as well

Without `create_graph=True` the inner gradient is a constant: the meta-gradient loses its
second-order term and the method is first-order MAML, silently. `first_order=true` asks for that
on purpose (cheaper, often nearly as good); the gallery measures both.

The task: sine-wave regression as in the MAML paper (amplitude 0.1-5, phase 0-pi, K = 10 shots,
a 1-40-40-1 MLP), against the paper's baseline: one model pretrained on all tasks at once, then
fine-tuned with the same inner steps.

The mistakes (`mistake=`), and what they cost (scripts/gates.py maml):

- no_create_graph: the inner gradient taken without create_graph: the run claims second-order and
  is first-order; its meta-gradient's cosine to the exact one falls below 1.
- detached_fast_weights: the fast weights detached (and made leaves again): no meta-gradient
  reaches the initialisation, which never improves.
- deepcopy_inner_step: the inner step as optimizer.step() on a deep copy: the same, in the form
  most often written.

Run: python -m gallery.maml seed=0 out_dir=/tmp/maml
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gallery.core import plots
from gallery.core.cli import command_line
from gallery.core.config import (
    BaseConfig,
    register_schema,
    require_non_negative,
    require_positive,
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
)
from gallery.core.setup import prepare

# --- config schema -----------------------------------------------------------------------------

@register_schema("maml")
@dataclass
class MamlConfig(BaseConfig):
    steps: int = 2000  # meta-iterations
    meta_batch: int = 10  # tasks per meta-iteration
    shots: int = 10  # K: the points a task shows before adapting (and the query points after)
    inner_lr: float = 0.01  # alpha
    inner_steps: int = 1  # inner SGD steps while meta-training
    lr: float = 1e-3  # beta, the outer Adam's
    hidden: int = 40
    first_order: bool = False  # first-order MAML: a choice, measured beside the pattern
    baseline: bool = False  # the paper's baseline instead: pretrained on all tasks at once
    eval_tasks: int = 100  # held-out tasks, the same for every run
    log_every: int = 100
    eval_every: int = 500
    ckpt_every: int = 500


def validate(cfg: MamlConfig) -> None:
    validate_base(cfg, BY_MISTAKE)
    require_positive(cfg, "meta_batch", "shots", "inner_lr", "inner_steps", "lr", "hidden",
                     "eval_tasks")
    require_non_negative(cfg, "steps")
    if cfg.baseline and (cfg.first_order or cfg.mistake != "none"):
        raise ConfigError(f"baseline=true trains no MAML, so first_order={cfg.first_order} and "
                          f"mistake={cfg.mistake} mean nothing with it: leave them out")
    if cfg.first_order and cfg.mistake != "none":
        raise ConfigError(f"first_order=true already drops the second-order term, so "
                          f"mistake={cfg.mistake} would run first-order MAML and show nothing: "
                          f"choose one of the two")


# --- model and tasks ----------------------------------------------------------------------------

def mlp(hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


def sine_tasks(n: int, shots: int, generator: torch.Generator) -> list[tuple[torch.Tensor, ...]]:
    """`n` tasks, each (x_support, y_support, x_query, y_query), `shots` points each, and its
    (amplitude, phase)."""
    amplitude = torch.empty(n).uniform_(0.1, 5.0, generator=generator)
    phase = torch.empty(n).uniform_(0.0, math.pi, generator=generator)
    x = torch.empty(n, 2 * shots, 1).uniform_(-5.0, 5.0, generator=generator)
    y = amplitude[:, None, None] * torch.sin(x - phase[:, None, None])
    return [(x[i, :shots], y[i, :shots], x[i, shots:], y[i, shots:], amplitude[i], phase[i])
            for i in range(n)]


# --- the pattern --------------------------------------------------------------------------------

def adapt(model, params, x, y, inner_lr, steps):
    """The fast weights after `steps` SGD steps on (x, y), as functions of `params`."""
    for _ in range(steps):
        loss = F.mse_loss(torch.func.functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(loss, list(params.values()),
                                    create_graph=True)  # PATTERN: the inner step keeps its graph
        params = {name: p - inner_lr * g for (name, p), g in zip(params.items(), grads)}
    return params


def adapt_first_order(model, params, x, y, inner_lr, steps):
    """First-order MAML, chosen (`first_order=true`): the inner gradient is a constant, so the
    meta-gradient is the query loss's gradient at the fast weights, applied to the start."""
    for _ in range(steps):
        loss = F.mse_loss(torch.func.functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(loss, list(params.values()))  # a constant, on purpose
        params = {name: p - inner_lr * g for (name, p), g in zip(params.items(), grads)}
    return params


def meta_loss(model, tasks, fast_weights):
    """The query loss at each task's fast weights (`adapt`'s, one per task), averaged over the
    meta-batch."""
    losses = [F.mse_loss(torch.func.functional_call(model, fast, (xq,)), yq)
              for (_, _, xq, yq, *_), fast in zip(tasks, fast_weights)]
    return torch.stack(losses).mean()


def meta_step(model, optimizer, tasks, fast_weights):
    loss = meta_loss(model, tasks, fast_weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # through the inner step, to the initialisation
    optimizer.step()
    return loss.detach()


# --- the mistakes -------------------------------------------------------------------------------

def adapt_no_create_graph(model, params, x, y, inner_lr, steps):
    for _ in range(steps):
        loss = F.mse_loss(torch.func.functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(loss, list(params.values()))  # MISTAKE: no create_graph
        params = {name: p - inner_lr * g for (name, p), g in zip(params.items(), grads)}
    return params


def adapt_detached_fast_weights(model, params, x, y, inner_lr, steps):
    for _ in range(steps):
        loss = F.mse_loss(torch.func.functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(loss, list(params.values()),
                                    create_graph=True)
        params = {name: (p - inner_lr * g).detach().requires_grad_()  # MISTAKE: cut from params
                  for (name, p), g in zip(params.items(), grads)}
    return params


def adapt_deepcopy_inner_step(model, params, x, y, inner_lr, steps):
    params = dict(copy.deepcopy(model).named_parameters())  # MISTAKE: a copy's: new leaves
    inner = torch.optim.SGD(params.values(), lr=inner_lr)
    for _ in range(steps):
        loss = F.mse_loss(torch.func.functional_call(model, params, (x,)), y)
        inner.zero_grad()
        loss.backward()
        inner.step()
    return params


BY_MISTAKE = {"none": adapt, "no_create_graph": adapt_no_create_graph,
              "detached_fast_weights": adapt_detached_fast_weights,
              "deepcopy_inner_step": adapt_deepcopy_inner_step}


# --- the baseline and measurement (off the training path) --------------------------------------

def baseline_step(model, optimizer, tasks):
    """The paper's baseline: one model regressed on every task's points at once."""
    x = torch.cat([t[0] for t in tasks] + [t[2] for t in tasks])
    y = torch.cat([t[1] for t in tasks] + [t[3] for t in tasks])
    loss = F.mse_loss(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def adapted_mse(model, tasks, inner_lr, steps) -> float:
    """The query MSE after `steps` plain SGD steps on each task's support points."""
    params = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}
    total = 0.0
    for xs, ys, xq, yq, *_ in tasks:
        fast = adapt_first_order(model, params, xs, ys, inner_lr, steps)  # values only
        with torch.no_grad():
            total += float(F.mse_loss(torch.func.functional_call(model, fast, (xq,)), yq))
    return total / len(tasks)


def adapted_to(tasks, adapt_fn, model, inner_lr, steps) -> list[dict]:
    """Each task's fast weights after `adapt_fn` on its support points, from the model's own."""
    params = dict(model.named_parameters())
    return [adapt_fn(model, params, xs, ys, inner_lr, steps) for xs, ys, *_ in tasks]


def meta_gradient_cosine(model, tasks, inner_lr, steps, adapt_fn) -> float:
    """The cosine between this run's meta-gradient and the exact second-order one, on `tasks`."""
    params = list(model.parameters())
    exact = torch.autograd.grad(
        meta_loss(model, tasks, adapted_to(tasks, adapt, model, inner_lr, steps)), params)
    loss = meta_loss(model, tasks, adapted_to(tasks, adapt_fn, model, inner_lr, steps))
    ours = torch.autograd.grad(loss, params, allow_unused=True)
    a = torch.cat([g.flatten() for g in exact])
    b = torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                   for p, g in zip(params, ours)])
    return float(a @ b / (a.norm() * b.norm())) if b.norm() > 0 else 0.0


def adapted_curves(model, task, inner_lr) -> dict:
    """On one held-out task: the true sine, its K points, and the model before and after 1 and 10
    steps, on a grid (lists, for the summary and the figures)."""
    xs, ys, _, _, amplitude, phase = task
    grid = torch.linspace(-5, 5, 101)[:, None]
    params = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}
    curves = {"x": grid.flatten().tolist(), "true": (amplitude * torch.sin(grid - phase)).flatten()
              .tolist(), "support": torch.cat([xs, ys], 1).tolist()}
    for steps in (0, 1, 10):
        fast = adapt_first_order(model, params, xs, ys, inner_lr, steps)
        with torch.no_grad():
            curves[f"{steps} steps"] = torch.func.functional_call(
                model, fast, (grid,)).flatten().tolist()
    return curves


def draw_adapted(ax, curves: dict, label: str) -> None:
    ax.plot(curves["x"], curves["true"], color="black", lw=1, label="true")
    ax.scatter(*zip(*curves["support"]), color="black", s=12, zorder=3)
    for steps, style in (("0 steps", ":"), ("1 steps", "--"), ("10 steps", "-")):
        ax.plot(curves["x"], curves[steps], ls=style, label=f"{label}, {steps}")
    ax.set(xlabel="x", ylabel="y", title=label)
    ax.legend(fontsize=6)


# --- training loop ------------------------------------------------------------------------------

def train(cfg) -> dict:
    cfg, device = prepare(cfg, validate, single_thread=lambda c: True)
    model = mlp(cfg.hidden).to(device)
    adapt_fn = adapt_first_order if cfg.first_order else BY_MISTAKE[cfg.mistake]
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    tasks_rng = torch.Generator().manual_seed(cfg.seed)
    held_out = sine_tasks(cfg.eval_tasks, cfg.shots, torch.Generator().manual_seed(10_000))
    start, probe = [t.detach().clone() for t in model.parameters()], Probe(device)
    mse_at_start = adapted_mse(model, held_out, cfg.inner_lr, 1)
    with Loop(cfg, EXAMPLE.name, {"model": model, "optimizer": optimizer, "tasks_rng": tasks_rng},
              device, "baseline" if cfg.baseline else adapt_fn.__name__) as loop:
        if loop.finished_summary:
            return loop.finished_summary
        for _ in loop:
            tasks = sine_tasks(cfg.meta_batch, cfg.shots, tasks_rng)
            with probe.step(sampled=False):
                if cfg.baseline:
                    loss = baseline_step(model, optimizer, tasks)
                else:
                    fast = adapted_to(tasks, adapt_fn, model, cfg.inner_lr, cfg.inner_steps)
                    loss = meta_step(model, optimizer, tasks, fast)
            if loop.due(cfg.log_every):
                loop.log(losses={"meta_loss": loss})
            if loop.due(cfg.eval_every, final=True):
                loop.evaluated(**{f"mse_{k}_steps": adapted_mse(model, held_out, cfg.inner_lr, k)
                                  for k in (1, 10)})
        curves = adapted_curves(model, held_out[0], cfg.inner_lr)
        plots.figure(loop.run.path("adapted.png"), draw_adapted, curves, loop.label)
        return loop.summary(adapted=curves,
            **{k: v for k, v in loop.evals[-1].items() if k.startswith("mse_")}, curve=loop.evals,
            mse_at_start=mse_at_start,
            init_moved=any(not torch.equal(a, b) for a, b in zip(start, model.parameters())),
            meta_gradient_cosine=None if cfg.baseline else meta_gradient_cosine(
                model, held_out[:10], cfg.inner_lr, cfg.inner_steps, adapt_fn),
            meta_iterations_per_sec=probe.units_per_sec)


# --- what the tour, `show`, the README and the hero figure read ----------------------------------

def headline(s: dict) -> str:
    cosine = s["meta_gradient_cosine"]
    return (f"held-out MSE after 1 / 10 steps: {s['mse_1_steps']:.3f} / {s['mse_10_steps']:.3f} "
            f"(at the start {s['mse_at_start']:.3f}); initialisation moved: {s['init_moved']}; "
            f"meta-gradient cosine to second order: "
            f"{'-' if cosine is None else format(cosine, '.4f')}")


def tour_figure(runs: dict, fig) -> None:
    """The held-out MSE as meta-training goes, then each run's adapted curves on one task."""
    shown = [(m, s) for m, s in runs.items() if "curve" in s]
    ax = fig.add_subplot(1, 1 + len(shown), 1)
    for mistake, s in shown:
        ax.plot([e["step"] for e in s["curve"]], [e["mse_10_steps"] for e in s["curve"]],
                marker="o", ms=3, label=plots.label(mistake))
    ax.set(xlabel="meta-iteration", ylabel="held-out MSE after 10 steps", yscale="log")
    ax.legend(fontsize=7)
    for i, (mistake, s) in enumerate(shown, start=2):
        draw_adapted(fig.add_subplot(1, 1 + len(shown), i), s["adapted"],
                     plots.label(mistake))


def measured(gate: dict, bench: dict) -> Measured:
    runs = gate["runs"]
    mse = {m: avg(runs[m], "mse_10_steps") for m in ("none", "first_order", "baseline")}
    cosine = avg(runs["no_create_graph"], "meta_gradient_cosine")
    return Measured(
        (f"MSE after 10 steps {mse['none']:.3f} (first-order {mse['first_order']:.3f}, the "
         f"pretrained baseline {mse['baseline']:.3f})",
         f"no_create_graph: meta-gradient cosine {cosine:.3f} to the exact one; "
         f"detached_fast_weights: the initialisation never moves"),
        Panel("held-out MSE after 10 steps", mse["none"],
              avg(runs["detached_fast_weights"], "mse_10_steps"), "detached_fast_weights"),
        cost_of("no_create_graph", runs["none"], runs["no_create_graph"],
                "scripts/gates.py maml, seeds 0-2, the same meta-iterations each",
                "meta_iterations_per_sec"))


SHORT = ("steps=300", "eval_every=300")
QUICK = ["steps=60", "eval_every=60", "log_every=30", "eval_tasks=10"]
EXAMPLE = Example(
    name="maml",
    pattern="where the graph must not be cut: the inner gradient with create_graph=True, fast "
            "weights through torch.func.functional_call",
    pattern_functions=("adapt", "adapt_first_order", "meta_loss", "meta_step"),
    mistakes={
        "no_create_graph": Mistake(
            "the inner gradient taken without create_graph=True",
            "silently first-order: the meta-gradient loses its second-order term (its cosine to "
            "the exact one falls below 1)",
            ("adapt_no_create_graph",),
            caught="has_graph: inner_grads[0][0], inner_grads[0][1]",
        ),
        "detached_fast_weights": Mistake(
            "the fast weights detached and made leaves again",
            "no meta-gradient reaches the initialisation: it never moves, and the post-adaptation "
            "error stays where it started",
            ("adapt_detached_fast_weights",),
            caught="gets_grad: no backward inside the block wrote a non-zero grad into "
                   "initialisation",
        ),
        "deepcopy_inner_step": Mistake(
            "the inner step as optimizer.step() on a deep copy of the model",
            "the same: the copy's weights are new leaves, and the initialisation never moves",
            ("adapt_deepcopy_inner_step",),
            caught="gets_grad: no backward inside the block wrote a non-zero grad into "
                   "initialisation",
        ),
    },
    budgets={"full": {"none": [], "no_create_graph": [], "detached_fast_weights": list(SHORT),
                      "deepcopy_inner_step": list(SHORT)},
             "quick": {m: QUICK for m in BY_MISTAKE}},
    headline=headline,
    figure=tour_figure,
    figure_size=(14, 3.4),
    check=lambda s: None if s["init_moved"] else "the initialisation never moved",
    smoke=("steps=20", "eval_every=10", "log_every=10", "meta_batch=2", "eval_tasks=4"),
    report=("mse_1_steps", "mse_10_steps", "mse_at_start", "init_moved", "meta_gradient_cosine",
            "meta_iterations_per_sec"),
    order=11,
    gate=Gate(
        "sine tasks, seeds 0-2 (the two that never move, 300 meta-iterations)",
        runs={"none": Runs(), "first_order": Runs(overrides=("first_order=true",)),
              "baseline": Runs(overrides=("baseline=true",)),
              "no_create_graph": Runs("no_create_graph"),
              "detached_fast_weights": Runs("detached_fast_weights", overrides=SHORT),
              "deepcopy_inner_step": Runs("deepcopy_inner_step", (0,), SHORT)},
        keys=("mse_at_start", "mse_1_steps", "mse_10_steps", "init_moved",
              "meta_gradient_cosine", "meta_iterations_per_sec"),
        criteria=(
            Criterion("after 10 inner steps the pattern's held-out MSE is at most half the "
                      "pretrained baseline's", ("none", "baseline"),
                      each(lambda p, b: p["mse_10_steps"] <= 0.5 * b["mse_10_steps"])),
            Criterion("its meta-gradient is the exact one (cosine >= 0.9999) and "
                      "no_create_graph's is not (cosine <= 0.99)", ("none", "no_create_graph"),
                      each(lambda p, m: p["meta_gradient_cosine"] >= 0.9999
                           and m["meta_gradient_cosine"] <= 0.99)),
            *(Criterion(f"{m} never moves the initialisation", (m,), each(
                lambda r: not r["init_moved"] and r["mse_1_steps"] == r["mse_at_start"]))
              for m in ("detached_fast_weights", "deepcopy_inner_step"))),
        figure_runs=("none", "no_create_graph", "detached_fast_weights"),
        figure_title="maml on sine tasks, default config, seed 0"),
    measured=measured,
    size_keys=("meta_batch", "shots"),
    lr_keys=("inner_lr", "lr"),
)


if __name__ == "__main__":
    command_line(EXAMPLE, train)
