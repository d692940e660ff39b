"""SimSiam: the stop-gradient is the whole algorithm. Without it the representation collapses.

    z1, z2 = encoder(x1), encoder(x2)              # two random views of the same images
    p1, p2 = predictor(z1), predictor(z2)
    loss = D(p1, z2.detach()) / 2 + D(p2, z1.detach()) / 2    # D: negative cosine similarity

Each view's prediction chases the other view's output, and that output is a constant target: no
gradient flows back through it. Nothing else (no negatives, no momentum encoder) holds the outputs
apart. The mistakes (`mistake=`), and what they cost on digits (scripts/gates.py simsiam):

- no_stop_grad: both branches get gradients. The loss falls to its minimum of -1 at once, which
  looks like success, while every image maps to the same output: the per-channel std of the
  l2-normalised output falls to about 0 (healthy: about 1/sqrt(d)) and kNN accuracy drops below a
  random encoder's. The loss curve alone hides the collapse; the std curve shows it.
- no_predictor: the stop-gradient kept, the predictor removed (p = z): it collapses too, as the
  SimSiam paper reports (output std about 0.035/sqrt(d) on seeds 0-2, kNN below the random
  encoder's).

Run: python -m gallery.simsiam seed=0 out_dir=/tmp/simsiam       (data=cifar10 | imagefolder online)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from omegaconf import MISSING
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
from gallery.core.device import amp_forward, compile_modules
from gallery.core.errors import ConfigError
from gallery.core.loop import Loop
from gallery.core.probes import Probe, reached_parameters
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
from gallery.core.schedule import lr_schedule
from gallery.core.setup import prepare
from gallery.data import images
from gallery.nets import conv_block, eval_mode

# --- config schema -----------------------------------------------------------------------------

@dataclass
class SimSiamData:
    name: str = MISSING  # digits | cifar10 | imagefolder
    root: str = "${cache_dir:}"  # where CIFAR-10 is downloaded, or the imagefolder root
    image_size: int | None = None  # None: 8 for digits, 32 otherwise
    limit: int = 10000  # online data: at most this many images
    val_fraction: float = 0.3  # held out: the kNN monitor's queries (the rest is its bank)
    split_seed: int = 0
    crop_scale: float = 0.8  # random resized crop keeps this much of each side, or more
    rotate: float = 0.25  # radians, either way
    flip: bool = False  # horizontal flips: not for digits (a flipped 2 is no digit)
    jitter: float = 0.4  # contrast +-jitter, brightness +-jitter/2
    noise: float = 0.1


@register_schema("simsiam")
@dataclass
class SimSiamConfig(BaseConfig):
    data: SimSiamData = field(default_factory=SimSiamData)
    steps: int = 800
    batch_size: int = 128
    lr: float = 0.05  # SGD: the encoder's decays on a cosine, the predictor's stays (the paper's)
    momentum: float = 0.9
    weight_decay: float = 1e-3
    width: int = 32  # the backbone's first conv width (then 2x, 4x)
    proj_hidden: int = 256
    dim: int = 64  # d: the projector's output
    pred_hidden: int = 16  # the predictor's bottleneck (d/4, as in the paper)
    projector_bn: bool = False  # BatchNorm on the projector's output (the paper's)
    knn_k: int = 20
    eval_every: int = 100
    log_every: int = 50
    ckpt_every: int = 200



def validate(cfg: SimSiamConfig) -> None:
    validate_base(cfg, BY_MISTAKE)
    require_choice(cfg, "data.name", ["digits", "cifar10", "imagefolder"])
    require_positive(cfg, "lr", "width", "proj_hidden", "dim", "pred_hidden", "knn_k", "data.limit")
    require_non_negative(cfg, "weight_decay", "data.rotate", "data.jitter", "data.noise")
    require_range(cfg, "momentum", 0.0, 0.999)
    require_range(cfg, "data.crop_scale", 0.1, 1.0)
    require_range(cfg, "data.val_fraction", 0.05, 0.9)
    if cfg.batch_size < 2:
        raise ConfigError(f"batch_size={cfg.batch_size}: BatchNorm needs at least 2 images per "
                          f"batch")


# --- models --------------------------------------------------------------------------------------

def make_encoder(channels: int, width: int, proj_hidden: int, dim: int,
                 projector_bn: bool) -> nn.Sequential:
    """encoder[0] is the backbone (what kNN and a later fine-tune use), encoder[1] the projector."""
    backbone = nn.Sequential(conv_block(channels, width), conv_block(width, 2 * width),
                             nn.MaxPool2d(2), conv_block(2 * width, 4 * width),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())
    projector = nn.Sequential(nn.Linear(4 * width, proj_hidden, bias=False),
                              nn.BatchNorm1d(proj_hidden), nn.ReLU(),
                              nn.Linear(proj_hidden, dim, bias=False),
                              *([nn.BatchNorm1d(dim)] if projector_bn else []))
    return nn.Sequential(backbone, projector)


def make_predictor(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, dim))


# --- the pattern --------------------------------------------------------------------------------

def negative_cosine(p, z):
    return -F.cosine_similarity(p, z, dim=1).mean()


def simsiam_loss(encoder, predictor, x1, x2):
    """Symmetric: each view's prediction is pulled towards the other view's output, held
    constant."""
    z1, z2 = encoder(x1), encoder(x2)
    p1, p2 = predictor(z1), predictor(z2)
    # PATTERN: the stop-gradient: each view's target is a constant
    return negative_cosine(p1, z2.detach()) / 2 + negative_cosine(p2, z1.detach()) / 2


def output_std(z):
    """The collapse monitor: per-channel std of the l2-normalised outputs, averaged over channels.
    0 when every input maps to the same direction; about 1/sqrt(d) when they spread over the
    sphere."""
    return F.normalize(z, dim=1).std(dim=0).mean()


@torch.no_grad()
def knn_accuracy(bank, bank_labels, queries, query_labels, k=20, temperature=0.1):
    """Each query takes the labels of its k most cosine-similar bank features, weighted by exp(sim /
    t)."""
    sim = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(len(queries), int(bank_labels.max()) + 1, device=queries.device)
    votes.scatter_add_(1, bank_labels[idx], (top / temperature).exp())
    return (votes.argmax(dim=1) == query_labels).float().mean().item()


# --- the mistakes -------------------------------------------------------------------------------

def simsiam_loss_no_stop_grad(encoder, predictor, x1, x2):
    z1, z2 = encoder(x1), encoder(x2)
    p1, p2 = predictor(z1), predictor(z2)
    # MISTAKE: no stop-gradient: the targets get gradients too
    return negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2


def simsiam_loss_no_predictor(encoder, predictor, x1, x2):
    z1, z2 = encoder(x1), encoder(x2)
    p1, p2 = z1, z2  # MISTAKE: no predictor: the same map on both sides
    return negative_cosine(p1, z2.detach()) / 2 + negative_cosine(p2, z1.detach()) / 2


BY_MISTAKE = {"none": simsiam_loss, "no_stop_grad": simsiam_loss_no_stop_grad,
              "no_predictor": simsiam_loss_no_predictor}


# --- measurement (off the training path) ----------------------------------------------------------

def target_branch_grad_share(loss_fn, encoder, predictor, x1, x2) -> float:
    """How much of the encoder's gradient flows back through the targets (the z in D(p, z)), as a
    share of its norm: 0 with the stop-gradient. The reference loss holds both targets constant
    explicitly. In eval mode, so BatchNorm's running statistics do not move."""
    params = [p for p in encoder.parameters() if p.requires_grad]
    with eval_mode(encoder, predictor):
        loss = loss_fn(encoder, predictor, x1, x2)
        uses_predictor = reached_parameters(loss, predictor)
        online = predictor if uses_predictor else nn.Identity()  # no_predictor: p = z
        full = torch.autograd.grad(loss, params)
        with torch.no_grad():
            t1, t2 = encoder(x1), encoder(x2)
        reference = negative_cosine(online(encoder(x1)),
                                    t2) / 2 + negative_cosine(online(encoder(x2)), t1) / 2
        held = torch.autograd.grad(reference, params)
    difference = torch.cat([(a - b).flatten() for a, b in zip(full, held)]).norm()
    return float(difference / torch.cat([a.flatten() for a in full]).norm().clamp_min(1e-30))


@torch.no_grad()
def evaluate(encoder, xt, yt, xv, yv, k: int, batch: int = 512) -> dict:
    """kNN accuracy of the backbone's features (train split as the bank, held-out split as queries),
    and the collapse monitor on the held-out outputs."""
    with eval_mode(encoder):
        bank = torch.cat([encoder[0](xt[i : i + batch]) for i in range(0, len(xt), batch)])
        queries = torch.cat([encoder[0](xv[i : i + batch]) for i in range(0, len(xv), batch)])
        z = encoder[1](queries)
    return {"knn_acc": knn_accuracy(bank, yt, queries, yv, k), "output_std": float(output_std(z))}


def load_data(cfg):
    d = cfg.data
    if d.name == "digits":
        x, y = images.load_digits_tensors()
        if d.image_size and d.image_size != 8:
            x = F.interpolate(x, size=d.image_size, mode="bilinear")
    else:
        x, y = images.dataset_to_tensors(images.torchvision_dataset(
            d.name, d.root, d.image_size or 32, channels=3),
                                         limit=d.limit)
    return images.stratified_split(x, y, d.val_fraction, d.split_seed, None)


def train(cfg) -> dict:
    cfg, device = prepare(cfg, validate, single_thread=lambda c: c.data.name == "digits")
    xt, yt, xv, yv = (t.to(device) for t in load_data(cfg))
    if cfg.knn_k > len(xt):
        raise ConfigError(f"knn_k={cfg.knn_k}: the kNN bank holds only {len(xt)} images")
    d = cfg.data
    views = functools.partial(images.random_views, crop_scale=d.crop_scale, rotate=d.rotate,
                              flip=d.flip, jitter=d.jitter, noise=d.noise)  # one random view each
    encoder = make_encoder(xt.shape[1], cfg.width, cfg.proj_hidden, cfg.dim, cfg.projector_bn)
    encoder = amp_forward(encoder.to(device), device, cfg.amp)
    predictor = make_predictor(cfg.dim, cfg.pred_hidden).to(device)
    compile_modules(cfg.compile, encoder, predictor)
    groups = [{"params": encoder.parameters()}, {"params": predictor.parameters()}]
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    schedule = lr_schedule(optimizer, "cosine", cfg.steps, fixed_groups=(1,))  # predictor: fixed
    batches = images.IndexBatches(len(xt), cfg.batch_size, torch.Generator().manual_seed(cfg.seed))
    loss_fn = BY_MISTAKE[cfg.mistake]
    stateful = {"encoder": encoder, "predictor": predictor, "optimizer": optimizer,
                "schedule": schedule, "batches": batches}
    k = cfg.knn_k
    raw_pixels = knn_accuracy(xt.flatten(1), yt, xv.flatten(1), yv, k)
    probe = Probe(device)
    with Loop(cfg, EXAMPLE.name, stateful, device, d.name) as loop:
        if loop.finished_summary:
            return loop.finished_summary
        if not loop.evals:  # step 0: the random encoder, the baseline to beat
            loop.evals.append({"step": 0, "loss": None, **evaluate(encoder, xt, yt, xv, yv, k)})
        for _ in loop:
            x = xt[next(batches).to(device)]
            x1, x2 = views(x), views(x)
            with probe.step(sampled=loop.sampled(cfg.log_every)):
                loss = loss_fn(encoder, predictor, x1, x2)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            schedule.step()
            if loop.due(cfg.log_every):
                loop.log(losses={"loss": loss.detach()})
            if loop.due(cfg.eval_every, final=True):
                loop.evaluated(**evaluate(encoder, xt, yt, xv, yv, k), loss=float(loss.detach()))
        plots.figure(loop.run.path("curves.png"), draw_curves, loop.evals, f"mistake={cfg.mistake}",
                     cfg.dim, panels=3, size=(12, 3.4))
        x, last = xt[next(batches).to(device)], loop.evals[-1]
        share = target_branch_grad_share(loss_fn, encoder, predictor, views(x), views(x))
        return loop.summary(
            data=d.name, steps=cfg.steps, dim=cfg.dim, loss=last["loss"], knn_acc=last["knn_acc"],
            output_std=last["output_std"], output_std_sqrt_d=last["output_std"] * cfg.dim**0.5,
            knn_random_encoder=loop.evals[0]["knn_acc"], knn_raw_pixels=raw_pixels,
            target_branch_grad_share=share, sec_per_step=probe.sec_per_step, curve=loop.evals)


def draw_curves(axes, curve: list[dict], label: str, dim: int) -> None:
    """Loss, output std x sqrt(d) and kNN accuracy against steps: the loss alone hides a
    collapse."""
    trained = [c for c in curve if c["loss"] is not None]
    axes[0].plot([c["step"] for c in trained], [c["loss"] for c in trained], marker="o", ms=3,
                 label=label)
    axes[0].set(xlabel="step", ylabel="loss (min -1)")
    axes[1].plot([c["step"] for c in curve], [c["output_std"] * dim**0.5 for c in curve],
                 marker="o", ms=3, label=label)
    axes[1].set(xlabel="step", ylabel="output std x sqrt(d) (collapse: 0)", ylim=(0, None))
    axes[2].plot([c["step"] for c in curve], [c["knn_acc"] for c in curve], marker="o", ms=3,
                 label=label)
    axes[2].set(xlabel="step", ylabel="kNN accuracy (held out)")
    for ax in axes:
        ax.legend(fontsize=8)


# --- what the tour and `python -m gallery show simsiam` read -------------------------------

def headline(s: dict) -> str:
    return (f"loss {s['loss']:.3f}, output std x sqrt(d) {s['output_std_sqrt_d']:.3f} (collapsed: "
            f"0), kNN acc {s['knn_acc']:.3f} (random encoder {s['knn_random_encoder']:.3f}, raw "
            f"pixels {s['knn_raw_pixels']:.3f})")


def tour_figure(runs: dict, fig) -> None:
    axes = fig.subplots(1, 3)
    for mistake in (m for m in BY_MISTAKE if m in runs and "curve" in runs[m]):
        draw_curves(axes, runs[mistake]["curve"], plots.label(mistake),
                    runs[mistake]["dim"])
    if "none" in runs and "curve" in runs["none"]:
        axes[2].axhline(runs["none"]["knn_raw_pixels"], color="gray", ls=":", label="raw pixels")
        axes[2].legend(fontsize=8)


def measured(gate: dict, bench: dict) -> Measured:
    runs = gate["runs"]
    std, knn = ({m: avg(runs[m], key) for m in ("none", "no_stop_grad")}
                for key in ("output_std_sqrt_d", "knn_acc"))
    return Measured(
        (f"output std {std['none']:.2f}/sqrt(d), kNN {knn['none']:.3f}",
         f"no_stop_grad: std {std['no_stop_grad']:.2f}/sqrt(d), kNN {knn['no_stop_grad']:.3f}: "
         "collapsed"),
        Panel("output std x sqrt(d)", std["none"], std["no_stop_grad"], "no_stop_grad"),
        Cost("no_stop_grad", avg(runs["no_stop_grad"], "wall_seconds")
             / avg(runs["none"], "wall_seconds"), None,
             "time: scripts/gates.py simsiam, seeds 0-2, the same steps each"))


PROJECTOR_BN = ("projector_bn=true",)


QUICK = ["steps=15", "eval_every=15", "log_every=5"]
EXAMPLE = Example(
    name="simsiam",
    pattern="SimSiam's stop-gradient: each view's prediction chases the other view's output, held "
            "constant",
    pattern_functions=("negative_cosine", "simsiam_loss", "output_std", "knn_accuracy"),
    mistakes={
        "no_stop_grad": Mistake(
            "no detach: gradients flow through both branches",
            "collapse: the loss reaches -1 while the output std falls to about 0 and kNN accuracy "
            "drops",
            ("simsiam_loss_no_stop_grad",),
            caught="constant: targets[0] (grad_fn=",
        ),
        "no_predictor": Mistake(
            "stop-gradient kept, predictor removed (p = z)",
            "collapse, as the paper reports: output std about 0 and kNN below the random encoder's "
            "(measured)",
            ("simsiam_loss_no_predictor",),
            caught=("gets_grad: no backward inside the block wrote a non-zero grad "
                    "into predictor"),
        ),
    },
    budgets=tour_budgets(BY_MISTAKE, QUICK),
    headline=headline,
    figure=tour_figure,
    figure_size=(12, 3.6),
    # 0 on CPU; bf16 autocast on CUDA leaves a little
    check=lambda s: None if s["target_branch_grad_share"] < 1e-2 else
    f"{s['target_branch_grad_share']:.3g} of the encoder's gradient flows through the "
    f"stop-gradient targets",
    smoke=("steps=4", "eval_every=2", "log_every=2", "batch_size=32"),
    report=("loss", "output_std_sqrt_d", "knn_acc", "knn_random_encoder", "knn_raw_pixels",
            "target_branch_grad_share", "sec_per_step"),
    order=6,
    gate=Gate(
        "digits, the default config, seeds 0-2, no_predictor measured and reported whatever it "
        "does; beside it, seed 0 with the paper's BatchNorm on the projector output",
        runs={"none": Runs(), "no_stop_grad": Runs("no_stop_grad"),
              "no_predictor": Runs("no_predictor"),
              "none projector_bn=true": Runs(seeds=(0,), overrides=PROJECTOR_BN),
              "no_stop_grad projector_bn=true": Runs("no_stop_grad", (0,), PROJECTOR_BN)},
        keys=("loss", "output_std_sqrt_d", "knn_acc", "knn_random_encoder", "knn_raw_pixels",
              "target_branch_grad_share"),
        criteria=(
            Criterion("the pattern keeps its output spread (std >= 0.5/sqrt(d)) and beats the "
                      "random encoder's kNN accuracy by >= 0.02", ("none",), each(
                          lambda r: r["output_std_sqrt_d"] >= 0.5
                          and r["knn_acc"] >= r["knn_random_encoder"] + 0.02)),
            Criterion("no_stop_grad collapses (std <= 0.1/sqrt(d)) in the same steps, to a lower "
                      "loss and a kNN accuracy below the random encoder's",
                      ("none", "no_stop_grad"), each(
                          lambda p, m: m["output_std_sqrt_d"] <= 0.1 and m["loss"] < p["loss"]
                          and m["knn_acc"] < m["knn_random_encoder"])),
            Criterion("each run under 2 minutes", ("none", "no_stop_grad", "no_predictor"),
                      each(lambda *rows: max(r["wall_seconds"] for r in rows) < 120),
                      timed=True)),
        figure_runs=("none", "no_stop_grad", "no_predictor"),
        figure_title="simsiam on digits, default config, seed 0",
        figure_file="simsiam_collapse.png"),
    measured=measured,
)


if __name__ == "__main__":
    command_line(EXAMPLE, train)
