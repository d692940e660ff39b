"""GAN: train the discriminator on `fake.detach()`, then reuse the same `fake` for the generator.

    fake = G(z)                                        # one generator forward per iteration
    d_loss = bce(D(real), 1) + bce(D(fake.detach()), 0) # D step: the graph stops at `fake`
    d_loss.backward(); opt_d.step()
    g_loss = bce(D(fake), 1)                           # G step: same `fake`, through the updated D
    opt_g.zero_grad(); g_loss.backward(); opt_g.step()

Without the detach, D's backward also runs through G and frees G's graph, so the G step has
nothing left to backpropagate through. The mistakes (`mistake=`), and what they cost:

- no_detach: the G step raises "Trying to backward through the graph a second time".
- retain_graph: the usual wrong fix. Correct results, but every D step runs a wasted backward
  through G and keeps D's graph alive into the G step (see scripts/bench.py gan for the figures).
- retain_graph_shared_zero_grad: the same with one zero_grad at the top, as copied code often has:
  G's update also carries the gradient of D's loss and pushes fakes to be *more* detectable.
- reuse_d_output: G's loss reuses the D-step output after opt_d.step() changed D's weights in place:
  "modified by an inplace operation".

Run: python -m gallery.gan data=ring8 seed=0 out_dir=/tmp/gan   (data=grid25 | digits | mnist | ...)
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import hydra
import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from gallery.core import plots
from gallery.core.checkpoint import load_checkpoint, save_checkpoint
from gallery.core.config import (
    BaseConfig,
    print_help_if_asked,
    register_schema,
    require_choice,
    require_non_negative,
    require_positive,
    run_cli,
    to_schema,
    validate_base,
)
from gallery.core.device import autocast, resolve_device
from gallery.core.errors import ConfigError, reraise_explained
from gallery.core.probes import (
    SavedTensorMeter,
    grad_snapshot,
    grad_written_norm,
    reached_parameters,
)
from gallery.core.registry import Example, Mistake
from gallery.core.run import Run, progress, resolve_out_dir
from gallery.core.schedule import SCHEDULES, lr_schedule
from gallery.core.seeding import rng_state, seed_everything, set_rng_state
from gallery.data import images
from gallery.data.mixtures import GaussianMixture, grid_centres, mode_metrics, ring_centres

EXAMPLE = Example(
    name="gan",
    pattern="discriminator step on fake.detach(); the generator step reuses the same fake",
    mistakes={
        "no_detach": Mistake(
            "D trains on `fake` without detach, so D's backward frees G's graph",
            "the G step raises 'Trying to backward through the graph a second time'",
        ),
        "retain_graph": Mistake(
            "no detach, patched with d_loss.backward(retain_graph=True) and G grads cleared",
            "correct, but a wasted backward through G every D step and a graph kept alive",
        ),
        "retain_graph_shared_zero_grad": Mistake(
            "retain_graph with one zero_grad for both nets at the top of the iteration",
            "G's update carries D's loss gradient too; fewer modes / fewer good samples",
        ),
        "reuse_d_output": Mistake(
            "the G loss reuses the D-step output after opt_d.step()",
            "'modified by an inplace operation' at the G step's backward",
        ),
    },
)
MIXTURES = ("ring8", "grid25", "mixture")
IMAGE_SETS = ("digits", *images.ONLINE, "imagefolder", "fake")


# --- config schema -----------------------------------------------------------------------------

@dataclass
class GanData:
    name: str = MISSING  # ring8 | grid25 | mixture | digits | mnist | fashion_mnist | cifar10 | imagefolder | fake
    modes: int = 8  # mixture: number of Gaussians on a ring (grid: modes must be a square)
    layout: str = "ring"  # mixture: ring | grid
    radius: float = 2.0  # ring radius, or grid spacing
    std: float = 0.02
    root: str = "data_cache"  # where online datasets are downloaded, or the imagefolder root
    image_size: int | None = None  # None: the dataset's own size (images)
    channels: int | None = None  # None: the dataset's own channels (images)


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
    pack: int = 1  # PacGAN: D judges `pack` samples at once, which makes a collapsed G easy to spot
    r1_gamma: float = 0.1  # R1 gradient penalty on real data
    lr_schedule: str = "linear"  # constant | linear (decay to 0 by the last step)
    eval_every: int = 2000
    eval_samples: int = 2500  # the VEEGAN/PacGAN protocol
    min_per_mode: int = 20  # high-quality samples a mode needs to count as covered
    log_every: int = 100


register_schema("gan", GanConfig)


def validate(cfg: GanConfig) -> None:
    validate_base(cfg, EXAMPLE.mistakes)
    require_choice(cfg, "data.name", [*MIXTURES, *IMAGE_SETS])
    require_choice(cfg, "data.layout", ["ring", "grid"])
    require_choice(cfg, "lr_schedule", SCHEDULES)
    require_non_negative(cfg, "r1_gamma")
    require_positive(cfg, "pack", "batch_size", "z_dim", "hidden", "layers", "lr_g", "lr_d", "eval_samples",
                     "data.modes", "data.radius", "data.std")
    if cfg.batch_size % cfg.pack:
        raise ConfigError(f"batch_size={cfg.batch_size} must be a multiple of pack={cfg.pack}")


# --- models --------------------------------------------------------------------------------------

def mlp(n_in: int, n_out: int, hidden: int, layers: int, sn: bool) -> nn.Sequential:
    wrap = nn.utils.parametrizations.spectral_norm if sn else (lambda m: m)
    dims = [n_in] + [hidden] * layers
    blocks: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        blocks += [wrap(nn.Linear(a, b)), nn.LeakyReLU(0.2)]
    return nn.Sequential(*blocks, wrap(nn.Linear(dims[-1], n_out)))


def _upsamplings(size: int) -> tuple[int, int]:
    """Start at a small side (<= 7) and double up to `size`: 8 -> 4x1, 28 -> 7x2, 32 -> 4x3."""
    start, n = size, 0
    while start > 7 and start % 2 == 0:
        start, n = start // 2, n + 1
    return start, n


class Packed(nn.Module):
    """PacGAN's packing: D sees `pack` samples concatenated along the feature/channel axis."""

    def __init__(self, net: nn.Module, pack: int):
        super().__init__()
        self.net, self.pack = net, pack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(len(x) // self.pack, self.pack * x.shape[1], *x.shape[2:]))


class ConvGenerator(nn.Module):
    """DCGAN-style: project z to a small feature map, then stride-2 transposed convs."""

    def __init__(self, z_dim: int, shape: tuple[int, int, int], base: int):
        super().__init__()
        channels, size, _ = shape
        self.start, n_up = _upsamplings(size)
        width = base * 2**n_up
        self.width = width
        self.project = nn.Sequential(nn.Linear(z_dim, width * self.start**2), nn.BatchNorm1d(width * self.start**2), nn.ReLU())
        ups: list[nn.Module] = []
        for i in range(n_up):
            a, b = width // 2**i, width // 2 ** (i + 1)
            last = i == n_up - 1
            ups.append(nn.ConvTranspose2d(a, channels if last else b, 4, 2, 1))
            ups += [nn.Tanh()] if last else [nn.BatchNorm2d(b), nn.ReLU()]
        if n_up == 0:
            ups = [nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh()]
        self.ups = nn.Sequential(*ups)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.ups(self.project(z).view(len(z), self.width, self.start, self.start))


def conv_discriminator(shape: tuple[int, int, int], base: int, sn: bool) -> nn.Sequential:
    wrap = nn.utils.parametrizations.spectral_norm if sn else (lambda m: m)
    channels, size, _ = shape
    start, n_down = _upsamplings(size)
    blocks: list[nn.Module] = []
    a = channels
    for i in range(n_down):
        b = base * 2**i
        blocks += [wrap(nn.Conv2d(a, b, 4, 2, 1)), nn.LeakyReLU(0.2)]
        a = b
    return nn.Sequential(*blocks, nn.Flatten(), wrap(nn.Linear(a * start * start, 1)))


# --- data -----------------------------------------------------------------------------------------

class ImageBatches:
    """Endless shuffled batches from an in-memory image tensor."""

    def __init__(self, images_: torch.Tensor, batch_size: int, device: torch.device, seed: int):
        self.images = images_.to(device)
        self.batch_size = min(batch_size, len(images_))
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, n: int) -> torch.Tensor:
        idx = torch.randint(len(self.images), (n,), generator=self.generator)
        return self.images[idx.to(self.images.device)]


def build_data(cfg: GanConfig, device: torch.device):
    d = cfg.data
    if d.name in MIXTURES:
        if d.name == "ring8" or (d.name == "mixture" and d.layout == "ring"):
            centres = ring_centres(d.modes, d.radius)
        else:
            side = math.isqrt(d.modes)
            if side * side != d.modes:
                raise ConfigError(f"data.modes={d.modes}: a grid needs a square number of modes")
            centres = grid_centres(side, d.radius)
        return GaussianMixture(centres, d.std, device, cfg.seed)
    if d.name == "digits":
        x, _ = images.load_digits_tensors()
    else:
        ds = images.torchvision_dataset(d.name, d.root, d.image_size, channels=d.channels)
        x, _ = images.dataset_to_tensors(ds, limit=20000)
    return ImageBatches(x, cfg.batch_size, device, cfg.seed)


def build_models(cfg: GanConfig, data, device: torch.device) -> tuple[nn.Module, nn.Module]:
    if isinstance(data, GaussianMixture):
        g = mlp(cfg.z_dim, 2, cfg.hidden, cfg.layers, sn=False)
        d = mlp(2 * cfg.pack, 1, cfg.hidden, cfg.layers, sn=cfg.spectral_norm)
    else:
        channels, *size = data.images.shape[1:]
        g = ConvGenerator(cfg.z_dim, (channels, *size), base=max(cfg.hidden // 8, 8))
        d = conv_discriminator((channels * cfg.pack, *size), base=max(cfg.hidden // 8, 8), sn=cfg.spectral_norm)
    if cfg.pack > 1:
        d = Packed(d, cfg.pack)
    return g.to(device), d.to(device)


# --- the pattern --------------------------------------------------------------------------------

def d_loss_fn(d: nn.Module, real: torch.Tensor, fake: torch.Tensor, r1_gamma: float = 0.0):
    """Returns (D's loss, D's logits on `fake`). With r1_gamma > 0 the loss adds the R1 penalty,
    gamma/2 * |grad_x D(real)|^2, which pulls D flat on the data and keeps training near equilibrium."""
    real = real.detach().requires_grad_(r1_gamma > 0)
    real_logits, fake_logits = d(real), d(fake)
    loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    if r1_gamma > 0:
        (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
        loss = loss + r1_gamma / 2 * grad.pow(2).flatten(1).sum(1).mean()
    return loss, fake_logits


def g_loss_fn(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating: maximise log D(G(z)) instead of minimising log(1 - D(G(z)))."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_step(d, opt_d, real, fake, mistake: str = "none", amp=None, r1_gamma: float = 0.0):
    """One D update. Returns (d_loss, still attached to its graph so probes can walk it; and the D
    logits on fake, kept only for `reuse_d_output`)."""
    amp = amp or torch.autocast("cpu", enabled=False)
    if mistake != "retain_graph_shared_zero_grad":
        opt_d.zero_grad(set_to_none=True)
    with amp:
        if mistake == "none":
            d_loss, _ = d_loss_fn(d, real, fake.detach(), r1_gamma)  # PATTERN: D's graph stops at fake
            fake_logits = None
        else:
            # MISTAKE: D sees the live `fake`, so its loss's graph runs on into G.
            d_loss, fake_logits = d_loss_fn(d, real, fake, r1_gamma)
    if mistake == "no_detach":
        d_loss.backward()  # MISTAKE: frees G's saved tensors; the G step cannot backward through them
    elif mistake == "none":
        d_loss.backward()
    else:
        d_loss.backward(retain_graph=True)  # MISTAKE: keeps the graph alive, and writes grads into G
    opt_d.step()
    return d_loss, fake_logits


def generator_step(g, d, opt_g, fake, mistake: str = "none", d_fake_logits=None, amp=None) -> torch.Tensor:
    amp = amp or torch.autocast("cpu", enabled=False)
    if mistake != "retain_graph_shared_zero_grad":
        opt_g.zero_grad(set_to_none=True)  # PATTERN: G's grads hold only the G loss
    # else MISTAKE: no zero_grad here, so G's grads still hold what D's backward wrote into them.
    with amp:
        if mistake == "reuse_d_output":
            g_loss = g_loss_fn(d_fake_logits)  # MISTAKE: logits from D's weights before opt_d.step()
        else:
            g_loss = g_loss_fn(d(fake))  # PATTERN: the same fake, through the updated D
    g_loss.backward()
    opt_g.step()
    return g_loss.detach()


KNOWN_ERRORS = {
    "no_detach": (
        "backward through the graph a second time",
        "mistake=no_detach: the D step backpropagated through G (D trained on `fake`, not `fake.detach()`), "
        "which freed G's graph, so the G step had nothing left to backpropagate through. "
        "Fix: train D on fake.detach(); keep the undetached fake for the G step.",
    ),
    "reuse_d_output": (
        "modified by an inplace operation",
        "mistake=reuse_d_output: the G loss reused D's output from the D step, but opt_d.step() then "
        "changed D's weights in place, and autograd refuses to backpropagate through stale saved weights. "
        "Fix: compute the G loss with a fresh D(fake) after the D step.",
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
        return {**mode_metrics(samples, data.centres, data.std, cfg.min_per_mode), "samples": samples.cpu()}
    return {"samples": samples.cpu()}


def save_figure(result: dict, data, path, title: str) -> None:
    plt = plots.pyplot()
    samples = result["samples"]
    if isinstance(data, GaussianMixture):
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, label="generated")
        c = data.centres.cpu()
        ax.scatter(c[:, 0], c[:, 1], s=40, marker="x", color="red", label="mode centres")
        lim = float(c.abs().max()) * 1.4 + 0.1
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
        ax.set_title(f"{title}\nmodes {result['modes_covered']}/{len(c)}, high quality {result['high_quality_frac']:.2f}", fontsize=9)
        ax.legend(loc="upper right", fontsize=7)
    else:
        from torchvision.utils import make_grid

        grid = make_grid(samples[:64], nrow=8, normalize=True, value_range=(-1, 1))
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.imshow(grid.permute(1, 2, 0).squeeze().numpy(), cmap="gray")
        ax.axis("off")
        ax.set_title(title, fontsize=9)
    plots.save(fig, path)


# --- training loop ------------------------------------------------------------------------------

def train(cfg) -> dict:
    cfg: GanConfig = to_schema(cfg)
    validate(cfg)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed, cfg.deterministic)
    data = build_data(cfg, device)
    g, d = build_models(cfg, data, device)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    schedules = [lr_schedule(opt, cfg.lr_schedule, cfg.steps) for opt in (opt_g, opt_d)]
    fixed_z = torch.randn(cfg.eval_samples, cfg.z_dim, generator=torch.Generator().manual_seed(10_000 + cfg.seed)).to(device)
    amp = lambda: autocast(device, cfg.amp)  # noqa: E731

    run = Run(resolve_out_dir(cfg.out_dir, "gan"), config=cfg, tensorboard=cfg.tensorboard)
    start = 0
    if cfg.resume:
        state = load_checkpoint(run.checkpoint_dir / "last.pt", map_location=device)
        g.load_state_dict(state["g"]), d.load_state_dict(state["d"])
        opt_g.load_state_dict(state["opt_g"]), opt_d.load_state_dict(state["opt_d"])
        for sched, sched_state in zip(schedules, state["schedules"]):
            sched.load_state_dict(sched_state)
        set_rng_state(state["rng"])
        data.generator.set_state(state["data_rng"])
        start = state["step"]

    def checkpoint(step: int) -> None:
        save_checkpoint(run.checkpoint_dir, {"g": g.state_dict(), "d": d.state_dict(), "opt_g": opt_g.state_dict(),
                                             "opt_d": opt_d.state_dict(), "step": step, "rng": rng_state(),
                                             "schedules": [sched.state_dict() for sched in schedules],
                                             "data_rng": data.generator.get_state()})

    last: dict = {}
    metrics: dict = {}
    timed_steps, timed_seconds = 0, 0.0
    bar = progress(cfg.steps, f"gan {cfg.data.name} mistake={cfg.mistake}", cfg.progress, initial=start)
    try:
        for step in range(start + 1, cfg.steps + 1):
            probe = step == start + 1 or step % cfg.log_every == 0
            t0 = time.perf_counter()
            real = data.sample(cfg.batch_size)
            z = torch.randn(len(real), cfg.z_dim, device=device)
            with contextlib.ExitStack() as probes:
                if probe:  # measure on log steps only: saved-tensor hooks slow every op they see
                    meter = probes.enter_context(SavedTensorMeter())
                    g_snapshot = grad_snapshot(g)
                if cfg.mistake == "retain_graph_shared_zero_grad":
                    opt_d.zero_grad(set_to_none=True)  # MISTAKE: one zero_grad for both nets, here only
                    opt_g.zero_grad(set_to_none=True)
                with amp():
                    fake = g(z)  # one G forward; the D step detaches it, the G step reuses it
                g_bytes = meter.total if probe else 0
                d_loss, d_fake_logits = discriminator_step(d, opt_d, real, fake, cfg.mistake, amp(), cfg.r1_gamma)
                if probe:
                    # D's backward walked (and needed) G's saved tensors exactly when its graph reached G.
                    reaches_g = bool(reached_parameters(d_loss, g))
                    metrics["d_step_reaches_g"] = reaches_g
                    metrics["d_step_saved_bytes"] = meter.total + (0 if reaches_g else -g_bytes)
                    metrics["g_grad_norm_after_d_step"] = grad_written_norm(g, g_snapshot)
                try:
                    g_loss = generator_step(g, d, opt_g, fake, cfg.mistake, d_fake_logits, amp())
                except RuntimeError as err:
                    reraise_explained(err, cfg.mistake, KNOWN_ERRORS)
                    raise
                if probe:
                    metrics["iter_peak_saved_bytes"] = meter.peak
            d_loss = d_loss.detach()
            for sched in schedules:
                sched.step()
            del fake, d_fake_logits
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if not probe:
                timed_steps, timed_seconds = timed_steps + 1, timed_seconds + time.perf_counter() - t0
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                metrics.update(d_loss=float(d_loss), g_loss=float(g_loss),
                               sec_per_step=timed_seconds / max(timed_steps, 1))
                run.log(step, **metrics)
                bar.set_postfix(d=f"{float(d_loss):.3f}", g=f"{float(g_loss):.3f}")
            if step % cfg.eval_every == 0 or step == cfg.steps:
                result = evaluate(g, data, fixed_z, cfg)
                last = {k: v for k, v in result.items() if k != "samples"}
                run.log(step, **{k: v for k, v in last.items() if k != "samples_per_mode"})
                save_figure(result, data, run.path(f"samples_step{step:06d}.png"), f"{cfg.mistake}, step {step}")
            if cfg.ckpt_every and step % cfg.ckpt_every == 0:
                checkpoint(step)
        checkpoint(cfg.steps)
    finally:
        bar.close()
        run.close()
    summary = {
        "example": "gan", "data": cfg.data.name, "mistake": cfg.mistake, "seed": cfg.seed, "steps": cfg.steps,
        "device": str(device), **last,
        "g_grad_norm_after_d_step": metrics.get("g_grad_norm_after_d_step"),
        "d_step_saved_bytes": metrics.get("d_step_saved_bytes"),
        "iter_peak_saved_bytes": metrics.get("iter_peak_saved_bytes"),
        "sec_per_step": timed_seconds / max(timed_steps, 1),
        "d_loss": metrics.get("d_loss"), "g_loss": metrics.get("g_loss"),
    }
    return run.write_summary(summary)


@hydra.main(version_base="1.3", config_path="../configs", config_name="gan")
def main(cfg) -> None:
    summary = run_cli(train, cfg)
    keys = ("modes_covered", "high_quality_frac", "g_grad_norm_after_d_step", "sec_per_step")
    print(" ".join(f"{k}={summary[k]}" for k in keys if k in summary))


if __name__ == "__main__":
    print_help_if_asked(EXAMPLE)
    main()
