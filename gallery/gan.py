"""GAN: train the discriminator on `fake.detach()`, then reuse the same `fake` for the generator.

    fake = g(z)                                          # one generator forward per iteration
    d_loss = bce(d(real), 1) + bce(d(fake.detach()), 0)  # D step: the graph stops at `fake`
    opt_d.zero_grad(); d_loss.backward(); opt_d.step()
    g_loss = bce(d(fake), 1)                             # G step: same `fake`, through the new D
    opt_g.zero_grad(); g_loss.backward(); opt_g.step()

The mistakes (`mistake=`), and what they cost:
- no_detach: D's backward also runs through G and frees G's graph, so the G step raises
  "Trying to backward through the graph a second time".
- retain_graph: the usual wrong fix. Correct results, but every D step runs a wasted backward
  through G and keeps D's graph alive into the G step (scripts/bench.py gan has the figures).
- retain_graph_shared_zero_grad: the same with one zero_grad at the top, as copied code often has:
  G's update also carries the gradient of D's loss and pushes fakes to be *more* detectable.
- reuse_d_output: G's loss reuses the D-step output after opt_d.step() changed D's weights in place:
  "modified by an inplace operation".
- penalty_no_create_graph (the opposite of a cut): the R1 penalty's `autograd.grad` without
  `create_graph=True`: the gradient it penalises has no graph, so the penalty is a constant and
  D's gradient is bit for bit what it is without R1.

Run: python -m gallery.gan data=ring8 seed=0 out_dir=/tmp/gan   (data=grid25 | digits | mnist | ...)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from gallery.core import dist, plots
from gallery.core.cli import command_line
from gallery.core.config import (
    BaseConfig,
    register_schema,
    require_choice,
    require_non_negative,
    require_positive,
    validate_base,
)
from gallery.core.device import amp_forward, compile_modules
from gallery.core.errors import ConfigError
from gallery.core.loop import Loop
from gallery.core.probes import CrossStepProbe
from gallery.core.registry import Cost, Criterion, Example, Gate, Measured, Mistake, Panel, avg
from gallery.core.schedule import SCHEDULES, lr_schedule
from gallery.core.setup import prepare
from gallery.data import images
from gallery.data.mixtures import GaussianMixture, mixture, mode_metrics
from gallery.nets import ConvGenerator, Packed, conv_discriminator, mlp

MIXTURES = ("ring8", "grid25", "mixture")
IMAGE_SETS = ("digits", *images.ONLINE, "imagefolder", "fake")


# --- config schema -----------------------------------------------------------------------------

@dataclass
class GanData:
    name: str = MISSING  # a mixture (ring8, grid25, mixture) or images (digits, cifar10...)
    modes: int = 8  # mixture: number of Gaussians on a ring (grid: modes must be a square)
    layout: str = "ring"  # mixture: ring | grid
    radius: float = 2.0  # ring radius, or grid spacing
    std: float = 0.02
    root: str = "${cache_dir:}"  # where online datasets are downloaded, or the imagefolder root
    image_size: int | None = None  # None: the dataset's own size (images)
    channels: int | None = None  # None: the dataset's own channels (images)


@register_schema("gan")
@dataclass
class GanConfig(BaseConfig):
    data: GanData = field(default_factory=GanData)
    steps: int = 12000
    batch_size: int = 256
    z_dim: int = 16
    hidden: int = 128  # MLP width (mixtures); conv channels = hidden // 8 * 2**i (images)
    layers: int = 3  # hidden layers per MLP
    lr_g: float = 2e-3
    lr_d: float = 2e-3
    beta1: float = 0.5
    beta2: float = 0.999
    spectral_norm: bool = False  # on D's layers
    standardize: bool = True  # mixtures: train in units of the data's std (any scale)
    pack: int = 1  # PacGAN: D judges `pack` samples at once, which makes a collapsed G easy to spot
    r1_gamma: float = 0.1  # R1 gradient penalty on real data
    r1_every: int = 1  # lazy R1 (StyleGAN2): the penalty on every n-th D step only, at n * r1_gamma
    lr_schedule: str = "linear"  # constant | linear (decay to 0 by the last step)
    eval_every: int = 2000
    ckpt_every: int = 2000  # about 20 s of training apart; a save takes milliseconds
    eval_samples: int = 2500  # the VEEGAN/PacGAN protocol
    min_per_mode: int = 20  # high-quality samples a mode needs to count as covered
    log_every: int = 100


def validate(cfg: GanConfig) -> None:
    validate_base(cfg, BY_MISTAKE)
    require_choice(cfg, "data.name", [*MIXTURES, *IMAGE_SETS])
    require_choice(cfg, "data.layout", ["ring", "grid"])
    require_choice(cfg, "lr_schedule", SCHEDULES)
    require_non_negative(cfg, "r1_gamma")
    require_positive(cfg, "pack", "r1_every", "batch_size", "z_dim", "hidden", "layers", "lr_g",
                     "lr_d", "eval_samples", "data.modes", "data.radius", "data.std")
    if cfg.batch_size % cfg.pack:
        raise ConfigError(f"batch_size={cfg.batch_size} must be a multiple of pack={cfg.pack}")


# --- models --------------------------------------------------------------------------------------

# What scripts/gates.py gan_sizes measured the default to learn (EXAMPLE.limits; a test checks)
MEASURED_MODES = {"ring": 8, "grid": 36}
# The sizes gate's mixtures: rings of 8-24 modes and grids of 5x5-7x7, (layout, modes) by name.
SIZES = {"ring8": ("ring", 8), "ring16": ("ring", 16), "ring24": ("ring", 24),
         "grid25": ("grid", 25), "grid36": ("grid", 36), "grid49": ("grid", 49)}


def covers(rows: list[dict], modes: int, share: float) -> bool:
    """A gate's runs on one mixture cover at least this share of its modes on average."""
    return avg(rows, "modes_covered") >= share * modes


def build_data(cfg: GanConfig, device: torch.device):
    d = cfg.data
    if d.name in MIXTURES:
        layout = "ring" if d.name == "ring8" else "grid" if d.name == "grid25" else d.layout
        if d.modes > MEASURED_MODES[layout] and dist.rank() == 0:
            print(f"warning: data.modes={d.modes} on a {layout}: the default config was measured "
                  f"up to {MEASURED_MODES[layout]} (--help); expect missed modes", file=sys.stderr)
        return mixture(layout, d.modes, d.radius, d.std, device, cfg.seed + dist.rank(),
                       cfg.standardize)  # each rank its own samples
    if d.name == "digits":
        x, _ = images.load_digits_tensors()
    else:
        ds = images.torchvision_dataset(d.name, d.root, d.image_size, channels=d.channels)
        x, _ = images.dataset_to_tensors(ds, limit=20000)
    return images.ImageBatches(dist.shard(x), cfg.batch_size, device,
                               cfg.seed)  # torchrun: this rank's shard


def build_models(cfg: GanConfig, data, device: torch.device) -> tuple[nn.Module, nn.Module]:
    if isinstance(data, GaussianMixture):
        g = mlp(cfg.z_dim, 2, cfg.hidden, cfg.layers, sn=False)
        d = mlp(2 * cfg.pack, 1, cfg.hidden, cfg.layers, sn=cfg.spectral_norm)
    else:
        channels, *size = data.images.shape[1:]
        g = ConvGenerator(cfg.z_dim, (channels, *size), base=max(cfg.hidden // 8, 8))
        d = conv_discriminator((channels * cfg.pack, *size), base=max(cfg.hidden // 8, 8),
                               sn=cfg.spectral_norm)
    d = Packed(d, cfg.pack) if cfg.pack > 1 else d
    return g.to(device), d.to(device)


# --- the pattern --------------------------------------------------------------------------------

def d_loss_fn(d, real, fake, r1_gamma=0.0):
    """D's loss (real -> 1, fake -> 0) and D's logits on `fake`. With r1_gamma > 0 it adds the R1
    penalty gamma/2 * |grad_x D(real)|^2, which keeps D flat on the data and training near
    equilibrium."""
    real = real.detach().requires_grad_(r1_gamma > 0)
    real_logits, fake_logits = d(real), d(fake)
    loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    if r1_gamma > 0:
        (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
        loss = loss + r1_gamma / 2 * grad.pow(2).flatten(1).sum(1).mean()
    return loss, fake_logits


def g_loss_fn(fake_logits):
    """Non-saturating: maximise log D(G(z)) instead of minimising log(1 - D(G(z)))."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_step(d, opt_d, real, fake, r1_gamma=0.0):
    """One D update on the fake, detached. Returns D's loss, detached: a value, no graph."""
    opt_d.zero_grad(set_to_none=True)
    d_loss, _ = d_loss_fn(d, real, fake.detach(), r1_gamma)  # PATTERN: D's graph stops at fake
    d_loss.backward()
    opt_d.step()
    return d_loss.detach()


def generator_step(d, opt_g, fake):
    """One G update through the D that was just updated."""
    opt_g.zero_grad(set_to_none=True)  # PATTERN: G's grads hold only the G loss
    g_loss = g_loss_fn(d(fake))  # PATTERN: the same fake, through the updated D
    g_loss.backward()
    opt_g.step()
    return g_loss.detach()


def gan_step(d, opt_d, opt_g, real, fake, r1_gamma=0.0):
    """One iteration on one generator forward (`fake = g(z)`): D learns from it detached, G through
    it."""
    d_loss = discriminator_step(d, opt_d, real, fake, r1_gamma)
    g_loss = generator_step(d, opt_g, fake)
    return d_loss, g_loss


# --- the mistakes -------------------------------------------------------------------------------

def discriminator_step_no_detach(d, opt_d, real, fake, r1_gamma=0.0):
    opt_d.zero_grad(set_to_none=True)
    d_loss, _ = d_loss_fn(d, real, fake, r1_gamma)  # MISTAKE: into G: its backward frees G's graph
    d_loss.backward()
    opt_d.step()
    return d_loss.detach()


def discriminator_step_retain_graph(d, opt_d, real, fake, r1_gamma=0.0):
    opt_d.zero_grad(set_to_none=True)
    d_loss, _ = d_loss_fn(d, real, fake, r1_gamma)  # MISTAKE: the graph runs on into G
    d_loss.backward(retain_graph=True)  # MISTAKE: the "fix": keeps G's graph, writes grads into G
    opt_d.step()
    return d_loss.detach()


def generator_step_shared_zero_grad(d, opt_g, fake):
    g_loss = g_loss_fn(d(fake))  # MISTAKE: no zero_grad above: G's grads still hold D's backward's
    g_loss.backward()
    opt_g.step()
    return g_loss.detach()


def generator_step_reuse_d_output(d, opt_g, fake_logits):
    opt_g.zero_grad(set_to_none=True)
    g_loss = g_loss_fn(fake_logits)  # MISTAKE: computed before opt_d.step() changed D in place
    g_loss.backward()
    opt_g.step()
    return g_loss.detach()


def discriminator_step_reuse_d_output(d, opt_d, real, fake, r1_gamma=0.0):
    opt_d.zero_grad(set_to_none=True)
    d_loss, fake_logits = d_loss_fn(d, real, fake, r1_gamma)  # MISTAKE: D's output, kept for G
    d_loss.backward(retain_graph=True)  # MISTAKE: ... so its graph must outlive this backward
    opt_d.step()
    return d_loss.detach(), fake_logits


def d_loss_fn_penalty_no_create_graph(d, real, fake, r1_gamma=0.0):
    real = real.detach().requires_grad_(r1_gamma > 0)
    real_logits, fake_logits = d(real), d(fake)
    loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    if r1_gamma > 0:
        (grad,) = torch.autograd.grad(real_logits.sum(), real, retain_graph=True)  # MISTAKE
        loss = loss + r1_gamma / 2 * grad.pow(2).flatten(1).sum(1).mean()  # a constant now
    return loss, fake_logits


def discriminator_step_penalty_no_create_graph(d, opt_d, real, fake, r1_gamma=0.0):
    opt_d.zero_grad(set_to_none=True)
    d_loss, _ = d_loss_fn_penalty_no_create_graph(d, real, fake.detach(), r1_gamma)  # MISTAKE
    d_loss.backward()
    opt_d.step()
    return d_loss.detach()


def gan_step_penalty_no_create_graph(d, opt_d, opt_g, real, fake, r1_gamma=0.0):
    d_loss = discriminator_step_penalty_no_create_graph(d, opt_d, real, fake, r1_gamma)  # MISTAKE
    g_loss = generator_step(d, opt_g, fake)
    return d_loss, g_loss


def gan_step_no_detach(d, opt_d, opt_g, real, fake, r1_gamma=0.0):
    d_loss = discriminator_step_no_detach(d, opt_d, real, fake, r1_gamma)  # MISTAKE
    g_loss = generator_step(d, opt_g, fake)
    return d_loss, g_loss


def gan_step_retain_graph(d, opt_d, opt_g, real, fake, r1_gamma=0.0):
    d_loss = discriminator_step_retain_graph(d, opt_d, real, fake, r1_gamma)  # MISTAKE
    g_loss = generator_step(d, opt_g, fake)
    return d_loss, g_loss


def gan_step_retain_graph_shared_zero_grad(d, opt_d, opt_g, real, fake, r1_gamma=0.0):
    opt_g.zero_grad(set_to_none=True)  # MISTAKE: one zero_grad for G, at the top of the iteration
    d_loss = discriminator_step_retain_graph(d, opt_d, real, fake, r1_gamma)  # MISTAKE
    g_loss = generator_step_shared_zero_grad(d, opt_g, fake)  # MISTAKE
    return d_loss, g_loss


def gan_step_reuse_d_output(d, opt_d, opt_g, real, fake, r1_gamma=0.0):
    d_loss, fake_logits = discriminator_step_reuse_d_output(  # MISTAKE
        d, opt_d, real, fake, r1_gamma)
    g_loss = generator_step_reuse_d_output(d, opt_g, fake_logits)  # MISTAKE
    return d_loss, g_loss


BY_MISTAKE = {"none": gan_step, "no_detach": gan_step_no_detach,
              "retain_graph": gan_step_retain_graph,
         "retain_graph_shared_zero_grad": gan_step_retain_graph_shared_zero_grad,
         "reuse_d_output": gan_step_reuse_d_output,
         "penalty_no_create_graph": gan_step_penalty_no_create_graph}

KNOWN_ERRORS = {
    "no_detach": ("backward through the graph a second time",
        "mistake=no_detach: the D step backpropagated through G (D trained on `fake`, not "
        "`fake.detach()`), which freed G's graph, so the G step had nothing left to backpropagate "
        "through. Fix: train D on fake.detach(); keep the undetached fake for the G step.",
    ),
    "reuse_d_output": ("modified by an inplace operation",
        "mistake=reuse_d_output: the G loss reused D's output from the D step, but opt_d.step() "
        "then changed D's weights in place, and autograd refuses to backpropagate through stale "
        "saved weights. Fix: compute the G loss with a fresh D(fake) after the D step.",
    ),
}


# --- evaluation and figures -------------------------------------------------------------------

@torch.no_grad()
def evaluate(g: nn.Module, data, fixed_z: torch.Tensor, cfg: GanConfig) -> dict:
    was_training = g.training
    g.eval()
    samples = g(fixed_z).float()
    g.train(was_training)
    if isinstance(data, GaussianMixture):
        samples = data.to_data(samples)  # G works in the units the data were sampled in
        return {**mode_metrics(samples, data.centres, data.std, cfg.min_per_mode),
                "samples": samples.cpu()}
    return {"samples": samples.cpu()}


# --- training loop ------------------------------------------------------------------------------

def train(cfg) -> dict:
    cfg, device = prepare(cfg, validate, single_thread=lambda c: c.data.name in MIXTURES)
    data = build_data(cfg, device)
    g, d = build_models(cfg, data, device)
    g, d = amp_forward(g, device, cfg.amp), amp_forward(d, device, cfg.amp)
    compile_modules(cfg.compile, g, *([d] if cfg.r1_gamma == 0 else []))  # R1: D stays eager
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    sched_g, sched_d = (lr_schedule(opt, cfg.lr_schedule, cfg.steps) for opt in (opt_g, opt_d))
    # torchrun: separate DDPs; D's graph stops at fake.detach(), so G is all-reduced in the G step
    # only. No buffer sync per forward: it breaks D's two forwards (pytorch#175024); G's BatchNorm
    # stays per rank.
    g_ddp, d_ddp = (dist.wrap(m, device, sync_buffers=False) for m in (g, d))
    g_allreduce = dist.AllReduceCounter(g_ddp, d_step=opt_d, g_step=opt_g)
    fixed_z = torch.randn(cfg.eval_samples, cfg.z_dim,
                          generator=torch.Generator().manual_seed(10_000 + cfg.seed)).to(device)
    stateful = {"g": g, "d": d, "opt_g": opt_g, "opt_d": opt_d, "sched_g": sched_g,
                "sched_d": sched_d, "data_rng": data.generator}
    gan_step_fn = BY_MISTAKE[cfg.mistake]
    probe, last = CrossStepProbe(device, opt_d, g, prefix="d_step", into="g"), {}
    with Loop(cfg, EXAMPLE.name, stateful, device, cfg.data.name,
              known_errors=KNOWN_ERRORS) as loop:
        if loop.finished_summary:
            return loop.finished_summary
        for _ in loop:
            real = data.sample(cfg.batch_size)
            z = torch.randn(len(real), cfg.z_dim, device=device)
            with probe.step(sampled=loop.sampled(cfg.log_every)):
                fake = g_ddp(z)  # one G forward: the D step detaches it, the G step reuses it
                r1 = cfg.r1_gamma * cfg.r1_every if loop.due(cfg.r1_every) else 0.0  # lazy R1
                d_loss, g_loss = gan_step_fn(d_ddp, opt_d, opt_g, real, fake, r1)
            sched_g.step()
            sched_d.step()
            if loop.due(cfg.log_every, final=True):
                loop.log(losses={"d_loss": d_loss, "g_loss": g_loss}, **probe.record,
                         sec_per_step=probe.sec_per_step)
            if loop.due(cfg.eval_every, final=True):
                result = evaluate(g, data, fixed_z, cfg)
                last = {k: v for k, v in result.items() if k != "samples"}
                loop.log(**{k: v for k, v in last.items() if k != "samples_per_mode"})
                centres = data.centres.cpu() if isinstance(data, GaussianMixture) else None
                plots.save_samples(result, centres, loop.run, loop.step, f"mistake={cfg.mistake}")
        return loop.summary(data=cfg.data.name, steps=cfg.steps, **last, **probe.record,
                            sec_per_step=probe.sec_per_step, d_loss=float(d_loss),
                            g_loss=float(g_loss), **dist.ddp_report(
                                {"g": g, "d": d}, probe.record,
                                g_allreduce_buckets=g_allreduce.by_step))


# --- what the tour and `python -m gallery show gan` read ------------------------------------

def headline(s: dict) -> str:
    modes = "" if "modes_covered" not in s else (
        f"modes {s['modes_covered']}/{len(s['samples_per_mode'])}, high quality "
        f"{s['high_quality_frac']:.2f}, ")
    return (f"{modes}grad written into G by the D step {s['g_grad_norm_after_d_step']:.3g}, "
            f"D-step saved bytes {s['d_step_saved_bytes']:,}")


def tour_figure(runs: dict, fig) -> None:
    shown = [m for m in ("none", "retain_graph_shared_zero_grad") if m in runs
             and "run_dir" in runs[m]]
    for i, mistake in enumerate(shown, start=1):
        path = f"{runs[mistake]['run_dir']}/samples.pt"
        saved = torch.load(path, weights_only=True)
        plots.draw_samples(fig.add_subplot(1, len(shown), i), saved["samples"], saved["centres"],
                     saved["title"])


def measured(gate: dict, bench: dict) -> Measured:
    ring, shared = gate["ring8"], gate["ring8 mistake"]
    row = next(r for r in bench["gan"] if r.get("data") == "digits")
    return Measured(
        (f"ring8: {ring['mean_modes']:g}/8 modes, {ring['mean_high_quality']:.0%} high quality",
         f"retain_graph_shared_zero_grad: {shared['mean_modes']:g}/8 modes, "
         f"{shared['mean_high_quality']:.0%} high quality"),
        Panel("modes of 8 covered (ring8)", ring["mean_modes"], shared["mean_modes"],
              "retain_graph_shared_zero_grad"),
        Cost("retain_graph", row["time_ratio_retain_graph_over_pattern"],
             row["retain_graph_d_step_saved_bytes"] / row["pattern_d_step_saved_bytes"],
             "scripts/bench.py gan (digits)"))


QUICK = ["steps=20", "eval_every=20", "log_every=10", "hidden=32", "eval_samples=500"]
EXAMPLE = Example(
    name="gan",
    pattern="discriminator step on fake.detach(); the generator step reuses the same fake",
    pattern_functions=("d_loss_fn", "g_loss_fn", "discriminator_step", "generator_step",
                       "gan_step"),
    mistakes={
        "no_detach": Mistake(
            "D trains on `fake` without detach, so D's backward frees G's graph",
            "the G step raises 'Trying to backward through the graph a second time'",
            ("discriminator_step_no_detach", "gan_step_no_detach"),
            caught="no_grad_reaches: a backward before Adam.step() wrote a grad into generator",
        ),
        "retain_graph": Mistake(
            "no detach, patched with d_loss.backward(retain_graph=True); G's step clears G's grads",
            "correct, but a wasted backward through G every D step and a graph kept alive",
            ("discriminator_step_retain_graph", "gan_step_retain_graph"),
            caught="no_grad_reaches: a backward before Adam.step() wrote a grad into generator",
        ),
        "retain_graph_shared_zero_grad": Mistake(
            "retain_graph with one zero_grad for G at the top of the iteration",
            "G's update carries D's loss gradient too; fewer modes / fewer good samples",
            ("generator_step_shared_zero_grad", "gan_step_retain_graph_shared_zero_grad"),
            caught="no_grad_reaches: a backward before Adam.step() wrote a grad into generator",
        ),
        "reuse_d_output": Mistake(
            "the G loss reuses the D-step output after opt_d.step()",
            "'modified by an inplace operation' at the G step's backward",
            ("discriminator_step_reuse_d_output", "generator_step_reuse_d_output",
             "gan_step_reuse_d_output"),
            caught="no_grad_reaches: a backward before Adam.step() wrote a grad into generator",
        ),
        "penalty_no_create_graph": Mistake(
            "the R1 penalty's autograd.grad taken without create_graph=True (retain_graph only)",
            "the penalty is a constant: D's gradient is bit for bit what it is without it, so R1 "
            "does nothing",
            ("d_loss_fn_penalty_no_create_graph", "discriminator_step_penalty_no_create_graph",
             "gan_step_penalty_no_create_graph"),
            caught="has_graph: r1_grad[0][0] carries no graph",
        ),
    },
    budgets={"full": {"none": [], "retain_graph": [], "retain_graph_shared_zero_grad": [],
                      "no_detach": ["steps=10"], "reuse_d_output": ["steps=10"],
                      "penalty_no_create_graph": ["steps=10"]},
             "quick": {m: QUICK for m in BY_MISTAKE}},
    headline=headline,
    figure=tour_figure,
    check=lambda s: None if s["g_grad_norm_after_d_step"] == 0.0 and not s["d_step_reaches_g"]
    else f"the D step reached G and wrote grad {s['g_grad_norm_after_d_step']:.3g} into it",
    smoke=("steps=4", "log_every=2", "eval_every=4", "hidden=16", "batch_size=32",
           "eval_samples=64"),
    limits=(f"data=mixture at std = spacing / 40: >= 90% of the modes at >= 0.8 high quality for "
            f"rings of up to {MEASURED_MODES['ring']} modes and grids of up to "
            f"{MEASURED_MODES['grid']} (scripts/gates.py gan_sizes). Past that a run warns once."),
    report=("modes_covered", "high_quality_frac", "g_grad_norm_after_d_step", "sec_per_step"),
    order=0,
    gate=Gate(
        "one config, seeds 0-4 on ring8, grid25 and rings of 12 and 16 modes, as Hydra sweeps two "
        "jobs at once, beside the old ring8 default and retain_graph_shared_zero_grad",
        criteria=(
            Criterion("ring8 and grid25 each cover >= 96% of their modes on average (8 of 8, 24 "
                      "of 25), both at >= 0.85 high quality", ("ring8", "grid25"),
                      lambda ring, grid: covers(ring, 8, 0.96) and covers(grid, 25, 0.96)
                      and min(avg(ring, "high_quality_frac"), avg(grid, "high_quality_frac"))
                      >= 0.85),
            Criterion("the rings of 12 and 16 modes (data=mixture) are covered alike, >= 96% "
                      "of their modes on average (no bar on quality here: gan_sizes sets one)",
                      ("ring12", "ring16"),
                      lambda ring12, ring16: covers(ring12, 12, 0.96) and covers(ring16, 16, 0.96)),
            Criterion("retain_graph_shared_zero_grad covers fewer modes of ring8, or with fewer "
                      "sharp samples, than the pattern", ("ring8", "ring8 mistake"), lambda p, m: (
                          avg(m, "modes_covered") < avg(p, "modes_covered")
                          or avg(m, "high_quality_frac") < avg(p, "high_quality_frac"))),
            Criterion("each mixture's runs on average at most 5% slower than the old ring8 "
                      "default beside it", ("ring8", "grid25", "ring12", "ring16",
                                            "ring8 old_default"), lambda *groups: all(
                          avg(rows, "wall_seconds") <= 1.05 * avg(groups[-1], "wall_seconds")
                          for rows in groups[:-1]), timed=True)),
        measure="gan_gates:mixtures"),
    more_gates={"sizes": Gate(
        "rings of 8-24 modes and grids of 25-49 at PacGAN's std-to-spacing ratio, seeds 0-1, as "
        "Hydra sweeps two jobs at once",
        criteria=tuple(Criterion(f"{name}: >= 90% of its modes and >= 0.8 high quality on "
                                 "average, in at most 3x ring8's wall time", (name, "ring8"),
                                 lambda rows, ring, modes=modes: covers(rows, modes, 0.9)
                                 and avg(rows, "high_quality_frac") >= 0.8
                                 and avg(rows, "wall_seconds") <= 3 * avg(ring, "wall_seconds"),
                                 timed=True) for name, (_, modes) in SIZES.items()),
        measure="gan_gates:sizes")},
    lr_keys=("lr_d", "lr_g"),
    measured=measured,
)


if __name__ == "__main__":
    command_line(EXAMPLE, train)
