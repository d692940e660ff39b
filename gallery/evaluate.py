"""The evaluation loop: eval mode and no graph inside the block, every module's mode back after it,
metrics as plain floats.

    with evaluating(model):                  # model.eval() + torch.no_grad(), and afterwards each
        logits = model(x)                    #   module's own mode back, even on an exception
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()   # a float, no graph

`model.eval()` and `torch.no_grad()` are independent: eval mode changes what the layers compute
(dropout off, BatchNorm reads its running statistics), no_grad changes what autograd records.
Either one alone leaves the other problem. An evaluation whose result later feeds training (here:
the hardest training examples, replayed in one step after each evaluation) must use no_grad, not
inference_mode: a tensor made under inference_mode cannot be saved for backward.

The task: scikit-learn's digits with 20 training images per class and a BatchNorm + Dropout MLP,
trained long enough that it overfits (the training loss reaches 0 and the validation loss turns up).

The mistakes (`mistake=`), and what they cost:

- eval_with_grad: eval mode but no no_grad, and the usual `total_loss += loss`: every batch's
  graph stays alive until the total is dropped, so the bytes held grow with the validation set.
- no_eval_mode: no_grad but no eval(): dropout drops and BatchNorm normalises by the batch, so two
  evaluations of the same weights disagree, the accuracy depends on the batch size, and evaluating
  changes the model (its running statistics learn the validation data).
- train_not_restored: model.eval() never undone: training goes on without dropout and with frozen
  BatchNorm statistics after the first evaluation.
- inference_tensor_reused: the hardest examples picked under inference_mode: the replay step
  raises "Inference tensors cannot be saved for backward".

Run: python -m gallery.evaluate seed=0 out_dir=/tmp/evaluate
"""

from __future__ import annotations

import contextlib
import math
import time
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
from gallery.core.probes import Probe, SavedTensorMeter, graph_stats, state_hash
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

# --- config schema -----------------------------------------------------------------------------

@dataclass
class EvaluateData(images.LabelledImages):  # name, root, image_size, limit, split_seed
    val_fraction: float = 0.3  # held out: the validation set
    train_per_class: int = 20  # few, so that the model overfits within the run


@register_schema("evaluate")
@dataclass
class EvaluateConfig(BaseConfig):
    data: EvaluateData = field(default_factory=EvaluateData)
    steps: int = 3000
    batch_size: int = 64
    eval_batch_size: int = 128
    lr: float = 1e-3
    hidden: int = 128
    dropout: float = 0.3
    replay: int = 32  # after each evaluation, one step on the k hardest training examples (0: off)
    eval_every: int = 250
    log_every: int = 250
    ckpt_every: int = 1000


def validate(cfg: EvaluateConfig) -> None:
    validate_base(cfg, BY_MISTAKE)
    require_choice(cfg, "data.name", images.LABELLED)
    require_positive(cfg, "lr", "hidden", "batch_size", "eval_batch_size", "data.limit",
                     "data.train_per_class")
    require_non_negative(cfg, "replay")
    require_range(cfg, "dropout", 0.0, 0.9)
    require_range(cfg, "data.val_fraction", 0.05, 0.9)


# --- model --------------------------------------------------------------------------------------

def classifier(n_in: int, hidden: int, n_classes: int, dropout: float) -> nn.Sequential:
    """An MLP with the two layers that behave differently in eval mode: BatchNorm and Dropout."""
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden),
                         nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))


def train_step(model, optimizer, x, y):
    """A plain training step: the model in train mode, a graph, a backward."""
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


# --- the pattern --------------------------------------------------------------------------------

@contextlib.contextmanager
def evaluating(model):
    """Eval mode and no graph inside the block; afterwards every submodule gets its own mode back
    (a part kept in eval by design stays in eval), even when the block raises."""
    modes = {module: module.training for module in model.modules()}  # PATTERN: each one's own
    model.eval()  # PATTERN: dropout off, BatchNorm reads (and leaves) its running statistics
    try:
        with torch.no_grad():  # PATTERN: no graph: nothing held for a backward that never comes
            yield
    finally:
        for module, mode in modes.items():  # PATTERN: given back, even on an exception
            module.training = mode  # its own flag: train(mode) would set its children's too


def evaluate(model, batches):
    """Mean loss and accuracy over (x, y) batches, as plain floats."""
    total_loss, correct, count = 0.0, 0, 0
    with evaluating(model):
        for x, y in batches:
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()  # PATTERN: a float
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
    return {"loss": total_loss / count, "accuracy": correct / count}


def hardest(model, x, y, k):
    """The k examples the model finds hardest now, for a training step to replay. An evaluation
    whose result feeds training: no_grad (inside `evaluating`), never inference_mode, whose
    tensors autograd refuses to save for backward. inference_mode is only for results that are
    read and never trained on (docs/bench.json: its speed against no_grad)."""
    with evaluating(model):  # PATTERN: no_grad, not inference_mode: these tensors feed training
        losses = F.cross_entropy(model(x), y, reduction="none")
        hard = losses.topk(min(k, len(y))).indices
        return x[hard], y[hard]


# --- the mistakes -------------------------------------------------------------------------------

def evaluate_with_grad(model, batches):
    total_loss, correct, count = 0.0, 0, 0
    model.eval()
    try:  # MISTAKE: eval mode, but no torch.no_grad(): every batch builds a graph
        for x, y in batches:
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum")  # MISTAKE: keeps them all
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
    finally:
        model.train()
    return {"loss": total_loss / count, "accuracy": correct / count}


def evaluate_no_eval_mode(model, batches):
    total_loss, correct, count = 0.0, 0, 0
    with torch.no_grad():  # MISTAKE: no graph, but dropout and BatchNorm stay in train mode
        for x, y in batches:
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
    return {"loss": total_loss / count, "accuracy": correct / count}


def evaluate_train_not_restored(model, batches):
    total_loss, correct, count = 0.0, 0, 0
    model.eval()  # MISTAKE: never undone: training goes on in eval mode
    with torch.no_grad():
        for x, y in batches:
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
    return {"loss": total_loss / count, "accuracy": correct / count}


def hardest_inference_mode(model, x, y, k):
    with evaluating(model), torch.inference_mode():  # MISTAKE: inference tensors feed training
        losses = F.cross_entropy(model(x), y, reduction="none")
        hard = losses.topk(min(k, len(y))).indices
        return x[hard], y[hard]


# the functions of a run that a mistake can swap, by name
EvaluateSteps = namedtuple("EvaluateSteps", ["evaluate", "hardest"])
BY_MISTAKE = {"none": EvaluateSteps(evaluate, hardest),
              "eval_with_grad": EvaluateSteps(evaluate_with_grad, hardest),
              "no_eval_mode": EvaluateSteps(evaluate_no_eval_mode, hardest),
              "train_not_restored": EvaluateSteps(evaluate_train_not_restored, hardest),
              "inference_tensor_reused": EvaluateSteps(evaluate, hardest_inference_mode)}

KNOWN_ERRORS = {
    "inference_tensor_reused": (
        "Inference tensors cannot be saved for backward",
        "mistake=inference_tensor_reused: the hardest examples were picked under "
        "torch.inference_mode(), and the replay step trained on them; autograd cannot save an "
        "inference tensor for backward. Fix: pick them under torch.no_grad() (as evaluating() "
        "does), or .clone() them outside inference_mode.",
    ),
}


# --- data and measurement (off the training path) ---------------------------------------------

def load_data(cfg):
    """(training x, y), (validation x, y): a fixed split for every run seed."""
    d = cfg.data
    x, y = images.labelled_tensors(d)
    return images.stratified_split(x, y, d.val_fraction, d.split_seed, d.train_per_class,
                                   key="data.train_per_class")


def plain(value) -> float:
    """A metric as a float, whether or not it kept a graph (measuring must not warn about it)."""
    return value.detach().item() if isinstance(value, torch.Tensor) else float(value)


def in_batches(x, y, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(x.split(size), y.split(size)))


def cost_of_evaluating(evaluate_fn, model, x, y, batch_size: int) -> dict:
    """What one evaluation costs and does, measured on the trained model: the bytes its result
    holds for backward (half and all of the validation set), the autograd nodes behind it, its
    time, how far two evaluations of the same weights disagree, whether evaluating changed the
    model, and the accuracy at a batch of 4."""
    out = {}
    for share, n in (("half", len(y) // 2), ("all", len(y))):
        with SavedTensorMeter() as meter:
            result = evaluate_fn(model, in_batches(x[:n], y[:n], batch_size))
            out[f"eval_held_bytes_{share}"] = meter.live  # still held while the result lives
        loss = result["loss"]
        out[f"eval_graph_nodes_{share}"] = (graph_stats(loss).nodes
                                            if isinstance(loss, torch.Tensor) else 0)
        del result, loss
    before = state_hash(model)
    first = evaluate_fn(model, in_batches(x, y, batch_size))
    out["eval_changed_state"] = state_hash(model) != before
    second = evaluate_fn(model, in_batches(x, y, batch_size))
    seconds = []
    for _ in range(9):  # the median of 9 passes: one pass is a few milliseconds
        start = time.perf_counter()
        evaluate_fn(model, in_batches(x, y, batch_size))
        seconds.append(time.perf_counter() - start)
    out["eval_ms"] = 1000 * sorted(seconds)[4]
    out["eval_repeat_gap"] = abs(plain(first["loss"]) - plain(second["loss"]))
    out["val_accuracy_batch4"] = evaluate_fn(model, in_batches(x, y, 4))["accuracy"]
    return out


def draw_curves(ax, evals: list[dict], label: str, train_too: bool = False) -> None:
    steps = [e["step"] for e in evals]
    line, = ax.plot(steps, [e["val_loss"] for e in evals], marker="o", ms=3,
                    label=f"{label}: validation")
    if train_too:
        ax.plot(steps, [e["train_loss"] for e in evals], ls="--", color=line.get_color(),
                label=f"{label}: training")
    ax.set(xlabel="step", ylabel="loss (mean cross-entropy)")
    ax.legend(fontsize=8)


# --- training loop ------------------------------------------------------------------------------

def train(cfg) -> dict:
    cfg, device = prepare(cfg, validate, single_thread=lambda c: c.data.name == "digits")
    xt, yt, xv, yv = (t.to(device) for t in load_data(cfg))
    steps = BY_MISTAKE[cfg.mistake]
    model = classifier(xt[0].numel(), cfg.hidden, int(yt.max()) + 1, cfg.dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batches = images.IndexBatches(len(yt), cfg.batch_size, torch.Generator().manual_seed(cfg.seed))
    val, seen = in_batches(xv, yv, cfg.eval_batch_size), in_batches(xt, yt, cfg.eval_batch_size)
    stateful = {"model": model, "optimizer": optimizer, "batches": batches}
    probe = Probe(device)  # steps per second
    with Loop(cfg, EXAMPLE.name, stateful, device, cfg.data.name,
              known_errors=KNOWN_ERRORS) as loop:
        if loop.finished_summary:
            return loop.finished_summary
        for _ in loop:
            with probe.step(sampled=False):
                batch = next(batches).to(device)
                loss = train_step(model, optimizer, xt[batch], yt[batch])
            if loop.due(cfg.log_every):
                loop.log(losses={"train": loss}, train_mode=model.training)
            if loop.due(cfg.eval_every, final=True):
                held_out, fitted = steps.evaluate(model, val), steps.evaluate(model, seen)
                loop.evaluated(val_loss=float(held_out["loss"]), val_accuracy=held_out["accuracy"],
                               train_loss=float(fitted["loss"]), train_mode=model.training)
                if cfg.replay:
                    train_step(model, optimizer, *steps.hardest(model, xt, yt, cfg.replay))
        plots.figure(loop.run.path("curves.png"), draw_curves, loop.evals,
                     f"mistake={cfg.mistake}", train_too=True)
        best = min(loop.evals, key=lambda e: e["val_loss"])
        last = loop.evals[-1]
        return loop.summary(
            data=cfg.data.name, steps=cfg.steps, train_images=len(yt), val_images=len(yv),
            val_loss=last["val_loss"], val_accuracy=last["val_accuracy"],
            train_loss=last["train_loss"], best_val_loss=best["val_loss"], best_step=best["step"],
            evaluations=len(loop.evals),
            trained_in_eval_mode=sum(not e["train_mode"] for e in loop.evals),
            **cost_of_evaluating(steps.evaluate, model, xv, yv, cfg.eval_batch_size),
            steps_per_sec=probe.units_per_sec, curve=loop.evals)


# --- what the tour and `python -m gallery show evaluate` read --------------------------------

def headline(s: dict) -> str:
    return (f"val accuracy {s['val_accuracy']:.1%} (at batch 4: {s['val_accuracy_batch4']:.1%}); "
            f"an evaluation holds {s['eval_held_bytes_all']:,} bytes for backward; evaluating "
            f"changed the model: {s['eval_changed_state']}; evaluations left in eval mode: "
            f"{s['trained_in_eval_mode']}")


def tour_figure(runs: dict, fig) -> None:
    curves, held = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    # eval_with_grad computes the pattern's very numbers: its cost is the right-hand panel
    for mistake in (m for m in BY_MISTAKE if m in runs and "curve" in runs[m]
                    and m != "eval_with_grad"):
        draw_curves(curves, runs[mistake]["curve"],
                    plots.label(mistake), train_too=mistake == "none")
    curves.set_yscale("log")
    names = [m for m in BY_MISTAKE if m in runs and "eval_held_bytes_all" in runs[m]]
    for i, share in enumerate(("half", "all")):
        mib = [runs[m][f"eval_held_bytes_{share}"] / 2**20 for m in names]
        bars = held.bar([j + 0.4 * i for j in range(len(names))], mib, 0.4,
                        label=f"{share} of the validation set")
        held.bar_label(bars, [f"{v:.1f}" if v else "0" for v in mib], fontsize=7)
    held.set_xticks([j + 0.2 for j in range(len(names))],
                    [plots.label(m) for m in names], fontsize=7, rotation=15)
    held.set(ylabel="MiB one evaluation holds for backward")
    held.legend(fontsize=8)


def measured(gate: dict, bench: dict) -> Measured:
    runs = gate["runs"]
    acc, small = (avg(runs[m], "val_accuracy_batch4") for m in ("none", "no_eval_mode"))
    held, none_held = (avg(runs[m], "eval_held_bytes_all") for m in ("eval_with_grad", "none"))
    slower = avg(runs["eval_with_grad"], "eval_ms") / avg(runs["none"], "eval_ms")
    return Measured(
        (f"val accuracy {acc:.1%} at batch 4; an evaluation holds {none_held:.0f} bytes",
         f"eval_with_grad: {held / 2**20:.1f} MiB held, growing with the validation set; "
         f"no_eval_mode: {small:.1%} at batch 4"),
        Panel("val accuracy at batch 4", acc, small, "no_eval_mode"),
        Cost("eval_with_grad", slower, held / none_held if none_held else math.inf,
             "scripts/gates.py evaluate, seeds 0-2 (time and bytes of one validation pass)"))


QUICK = ["steps=200", "eval_every=100"]
EXAMPLE = Example(
    name="evaluate",
    pattern="the evaluation loop: eval mode and no graph inside the block, every module's mode "
            "back afterwards, metrics as floats",
    pattern_functions=("evaluating", "evaluate", "hardest"),
    mistakes={
        "eval_with_grad": Mistake(
            "eval mode but no torch.no_grad(), and the usual total_loss += loss",
            "every batch's graph stays alive until the total is dropped: the bytes held grow with "
            "the validation set, and the evaluation is slower",
            ("evaluate_with_grad",),
            caught="constant: metrics['loss'] (grad_fn=",
        ),
        "no_eval_mode": Mistake(
            "torch.no_grad() but no model.eval()",
            "dropout and batch statistics at evaluation: two evaluations of the same weights "
            "disagree, accuracy falls at small batches, and evaluating changes BatchNorm's buffers",
            ("evaluate_no_eval_mode",),
            caught="unchanged: the block changed model (2.num_batches_tracked (buffer)",
        ),
        "train_not_restored": Mistake(
            "model.eval() at evaluation, never undone",
            "training goes on without dropout and with frozen BatchNorm statistics after the "
            "first evaluation",
            ("evaluate_train_not_restored",),
            caught="modes_restored: the block did not give back the modes it found",
        ),
        "inference_tensor_reused": Mistake(
            "the hardest examples picked under torch.inference_mode() and replayed in training",
            "the replay step raises 'Inference tensors cannot be saved for backward'",
            ("hardest_inference_mode",),
            no_check="none is needed: autograd itself refuses, at the first training step that "
                     "uses an inference tensor",
        ),
    },
    budgets=tour_budgets(BY_MISTAKE, QUICK),
    headline=headline,
    figure=tour_figure,
    check=lambda s: None if s["eval_held_bytes_all"] == 0 and not s["eval_changed_state"]
    and s["trained_in_eval_mode"] == 0 else "an evaluation held a graph, changed the model or "
    "left it in eval mode",
    smoke=("steps=40", "eval_every=20", "log_every=20"),
    report=("val_accuracy", "val_accuracy_batch4", "eval_held_bytes_all", "eval_changed_state",
            "trained_in_eval_mode", "steps_per_sec"),
    order=0,
    gate=Gate(
        "digits with 20 training images per class, the default config, seeds 0-2",
        runs={"none": Runs(), "eval_with_grad": Runs("eval_with_grad"),
              "no_eval_mode": Runs("no_eval_mode"),
              "train_not_restored": Runs("train_not_restored")},
        keys=("val_accuracy", "val_loss", "best_val_loss", "best_step", "train_loss",
              "val_accuracy_batch4", "eval_held_bytes_half", "eval_held_bytes_all",
              "eval_graph_nodes_all", "eval_ms", "eval_repeat_gap", "eval_changed_state",
              "trained_in_eval_mode", "evaluations", "steps_per_sec"),
        criteria=(
            Criterion("the pattern reaches 88% validation accuracy and overfits (final val loss "
                      ">= 1.2x its best)", ("none",), each(lambda r: r["val_accuracy"] >= 0.88
                                                           and r["val_loss"] >= 1.2
                                                           * r["best_val_loss"])),
            Criterion("its evaluation holds 0 bytes, repeats exactly, leaves the model unchanged "
                      "and gives the same accuracy at batch 4 (within 1 point: another batch size "
                      "rounds differently)", ("none",), each(
                          lambda r: r["eval_held_bytes_all"] == 0 and r["eval_repeat_gap"] == 0
                          and not r["eval_changed_state"] and r["trained_in_eval_mode"] == 0
                          and abs(r["val_accuracy_batch4"] - r["val_accuracy"]) <= 0.01)),
            Criterion("eval_with_grad holds bytes that grow with the validation set (all >= "
                      "1.8x half)", ("eval_with_grad",), each(
                          lambda r: r["eval_held_bytes_half"] > 0
                          and r["eval_held_bytes_all"] >= 1.8 * r["eval_held_bytes_half"])),
            Criterion("no_eval_mode changes the model, does not repeat and loses >= 5 points at "
                      "batch 4", ("none", "no_eval_mode"), each(
                          lambda p, m: m["eval_changed_state"] and m["eval_repeat_gap"] > 0
                          and m["val_accuracy_batch4"] <= p["val_accuracy"] - 0.05)),
            Criterion("train_not_restored trains in eval mode after every evaluation",
                      ("train_not_restored",),
                      each(lambda r: r["trained_in_eval_mode"] == r["evaluations"]))),
        figure_runs=("none", "no_eval_mode", "train_not_restored", "eval_with_grad"),
        figure_title="evaluate on digits (20 training images per class), seed 0"),
    measured=measured,
    size_keys=("batch_size", "eval_batch_size", "hidden"),
)


if __name__ == "__main__":
    command_line(EXAMPLE, train)
