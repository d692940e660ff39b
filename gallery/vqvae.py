"""VQ-VAE: the straight-through estimator, and the two stop-gradient losses beside it.

    e = codebook[nearest(z)]                          # the code each encoder vector snaps to
    codebook_loss = mse(e, z.detach())                # sg[z]: only the codebook moves
    commitment_loss = mse(z, e.detach())              # sg[e]: only the encoder commits
    z_q = z + (e - z).detach()                        # the value of e, the gradient of z
    loss = mse(decoder(z_q), x) + codebook_loss + beta * commitment_loss

Snapping to the nearest code has no gradient. The straight-through line passes the decoder's
gradient to the encoder as if the snap were the identity, and the two losses move the codebook and
the encoder towards each other, each with the other held constant. The mistakes (`mistake=`), and
what they cost on digits (scripts/gates.py vqvae):

- codebook_on_st: the codebook and commitment losses are computed on the straight-through output
  z_q, whose graph runs to z and never to the codebook. The codebook gets no gradient: with
  revival off (revive_after=0, as the gate and the tour run the mistakes) it ends the run
  bit-for-bit as it started, while the reconstruction loss still falls: the trap is that nothing
  looks wrong. At the defaults only revival moves it, re-seeding codes from an encoder that no
  loss commits to them, and the reconstruction can blow up.
- no_straight_through: the decoder reads e itself. The reconstruction's gradient stops at the
  codebook; the encoder learns only from the commitment term, the codes collapse to one (perplexity
  1), and reconstruction is far worse at the same budget.

Dead codes, VQ's best-known failure as the codebook grows: past 32 codes most codes are never
chosen. The default revives them (revive_dead_codes): after revive_warmup steps, a code no vector
chose for revive_after steps is re-seeded from the encoder's outputs (scripts/gates.py
vqvae_sizes measures usage and error by codebook size, with and without it).

Run: python -m gallery.vqvae seed=0 out_dir=/tmp/vqvae   (data=mnist | fashion_mnist | cifar10 |
imagefolder online)
"""

from __future__ import annotations

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
from gallery.core.errors import ConfigError
from gallery.core.loop import Counters, Loop
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
)
from gallery.core.setup import prepare
from gallery.data import images
from gallery.nets import eval_mode

# --- config schema -----------------------------------------------------------------------------

@dataclass
class VqvaeData:
    name: str = MISSING  # digits | mnist | fashion_mnist | cifar10 | imagefolder
    root: str = "${cache_dir:}"  # where torchvision downloads, or the imagefolder root
    image_size: int | None = None  # None: 8 for digits, 28 for (fashion) mnist, 32 otherwise
    limit: int = 10000  # online data: at most this many images
    val_fraction: float = 0.2  # held out: the reconstruction error is measured there
    split_seed: int = 0


@register_schema("vqvae")
@dataclass
class VqvaeConfig(BaseConfig):
    data: VqvaeData = field(default_factory=VqvaeData)
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    codebook_size: int = 32  # K codes
    code_dim: int = 8  # each code's length
    hidden: int = 32  # conv channels
    beta: float = 0.25  # the commitment weight (the paper's)
    revive_after: int = 200  # re-seed a code no vector chose for this many steps (0: never)
    revive_warmup: int = 500  # steps before any code counts as idle: codes still settling are not
    # dead (without it, revival reseeds a few live codes at 32 and costs reconstruction there)
    eval_every: int = 250
    log_every: int = 100
    ckpt_every: int = 500


def validate(cfg: VqvaeConfig) -> None:
    validate_base(cfg, BY_MISTAKE)
    require_choice(cfg, "data.name", ["digits", "mnist", "fashion_mnist", "cifar10",
                                      "imagefolder"])
    require_positive(cfg, "lr", "codebook_size", "code_dim", "hidden", "batch_size", "data.limit")
    require_non_negative(cfg, "revive_after", "revive_warmup")
    require_non_negative(cfg, "beta")
    require_range(cfg, "data.val_fraction", 0.05, 0.9)


# --- model --------------------------------------------------------------------------------------

class VQVAE(nn.Module):
    """A conv encoder to a grid of `code_dim` vectors (one stride-2 stage for 8x8 images, two
    above), a codebook of K vectors, and a mirrored decoder."""

    def __init__(self, channels: int, hidden: int, code_dim: int, codebook_size: int,
                 stages: int):
        super().__init__()
        down = [m for _ in range(stages) for m in (nn.Conv2d(hidden, hidden, 4, 2, 1), nn.ReLU())]
        up = [m for _ in range(stages)
              for m in (nn.ConvTranspose2d(hidden, hidden, 4, 2, 1), nn.ReLU())]
        self.encoder = nn.Sequential(nn.Conv2d(channels, hidden, 3, 1, 1), nn.ReLU(), *down,
                                     nn.Conv2d(hidden, code_dim, 1))
        self.decoder = nn.Sequential(nn.Conv2d(code_dim, hidden, 3, 1, 1), nn.ReLU(), *up,
                                     nn.Conv2d(hidden, channels, 3, 1, 1))
        # small codes near the encoder's first outputs: every code gets picked early on (a codebook
        # drawn at unit scale left half the codes dead on digits)
        self.codebook = nn.Parameter(torch.empty(codebook_size, code_dim).uniform_(
            -1 / codebook_size, 1 / codebook_size))


# --- the pattern --------------------------------------------------------------------------------

def quantize(z, codebook):
    """Snap each vector of z (B, D, H, W) to its nearest code in `codebook` (K, D). Returns the
    straight-through output, the codes (B, H, W), and the codebook and commitment losses."""
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d)
    codes = torch.cdist(flat, codebook).argmin(1)  # no gradient: an index
    e = codebook[codes].view(b, h, w, d).permute(0, 3, 1, 2)
    codebook_loss = F.mse_loss(e, z.detach())  # PATTERN: sg[z]: only the codebook moves
    commitment_loss = F.mse_loss(z, e.detach())  # PATTERN: sg[e]: only the encoder commits
    z_q = z + (e - z).detach()  # PATTERN: the value of e, the gradient of the identity to z
    return z_q, codes.view(b, h, w), codebook_loss, commitment_loss


def vq_step(model, optimizer, x, z_q, codebook_loss, commitment_loss, beta=0.25):
    """One update on `quantize`'s outputs for x: reconstruct through the straight-through output
    z_q, plus both VQ losses. Returns the reconstruction error, detached."""
    reconstruction = F.mse_loss(model.decoder(z_q), x)
    loss = reconstruction + codebook_loss + beta * commitment_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return reconstruction.detach()


def code_usage(codes, codebook_size):
    """Perplexity (exp of the codes' entropy: K when every code is used equally, 1 when one code
    takes all) and the fraction of the K codes used at least once."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).float()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(entropy.exp()), float((counts > 0).float().mean())


@torch.no_grad()  # PATTERN: a repair of the codebook's values, not a training signal
def revive_dead_codes(codebook, idle_steps, codes, encoder, x, patience):
    """Codes that no vector chose for `patience` steps are re-seeded from this batch's encoder
    outputs, where the data are: dead codes are VQ's best-known failure as K grows. Returns how
    many were revived (the encoder runs only when one is)."""
    idle_steps += 1
    idle_steps[codes.unique()] = 0
    dead = (idle_steps > patience).nonzero().flatten()
    if len(dead):
        z = encoder(x)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        codebook[dead] = flat[torch.randint(len(flat), (len(dead),), device=flat.device)]
        idle_steps[dead] = 0
    return len(dead)


# --- the mistakes -------------------------------------------------------------------------------

def quantize_no_sg_codebook(z, codebook):
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d)
    codes = torch.cdist(flat, codebook).argmin(1)  # no gradient: an index
    e = codebook[codes].view(b, h, w, d).permute(0, 3, 1, 2)
    codebook_loss = F.mse_loss(e, z)  # MISTAKE: no sg: it pulls the encoder too, with weight 1
    commitment_loss = F.mse_loss(z, e.detach())
    z_q = z + (e - z).detach()
    return z_q, codes.view(b, h, w), codebook_loss, commitment_loss


def quantize_codebook_on_st(z, codebook):
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d)
    codes = torch.cdist(flat, codebook).argmin(1)  # no gradient: an index
    e = codebook[codes].view(b, h, w, d).permute(0, 3, 1, 2)
    z_q = z + (e - z).detach()
    codebook_loss = F.mse_loss(z_q, z.detach())  # MISTAKE: z_q's graph runs to z, not the codebook
    commitment_loss = F.mse_loss(z, z_q.detach())
    return z_q, codes.view(b, h, w), codebook_loss, commitment_loss


def quantize_no_straight_through(z, codebook):
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d)
    codes = torch.cdist(flat, codebook).argmin(1)  # no gradient: an index
    e = codebook[codes].view(b, h, w, d).permute(0, 3, 1, 2)
    codebook_loss = F.mse_loss(e, z.detach())
    commitment_loss = F.mse_loss(z, e.detach())
    z_q = e  # MISTAKE: the decoder's gradient stops at the codebook, never reaches the encoder
    return z_q, codes.view(b, h, w), codebook_loss, commitment_loss


BY_MISTAKE = {"none": quantize, "codebook_on_st": quantize_codebook_on_st,
              "no_straight_through": quantize_no_straight_through,
              "no_sg_codebook": quantize_no_sg_codebook}


# --- data, evaluation, figures ------------------------------------------------------------------

def load_data(cfg):
    d = cfg.data
    if d.name == "digits":
        x, y = images.load_digits_tensors()
    else:
        size = d.image_size or (28 if "mnist" in d.name else 32)
        channels = 1 if "mnist" in d.name else 3
        x, y = images.dataset_to_tensors(images.torchvision_dataset(d.name, d.root, size,
                                                                    channels=channels),
                                         limit=d.limit)
    xt, _, xv, _ = images.stratified_split(x, y, d.val_fraction, d.split_seed, None)
    return xt, xv


@torch.no_grad()
def evaluate(model, xv, codebook_size, batch: int = 512) -> dict:
    """Held-out reconstruction error, and how the held-out images use the codebook."""
    with eval_mode(model):
        errors, codes = [], []
        for i in range(0, len(xv), batch):
            x = xv[i:i + batch]
            z_q, c, _, _ = quantize(model.encoder(x), model.codebook)
            errors.append(F.mse_loss(model.decoder(z_q), x, reduction="sum"))
            codes.append(c.flatten())
    perplexity, used = code_usage(torch.cat(codes), codebook_size)
    return {"recon_mse": float(sum(errors) / xv.numel()), "perplexity": perplexity,
            "codes_used": used}


def draw_reconstructions(axes, model, x, label: str) -> None:
    """Top row: the images; bottom row: their reconstructions through the codebook."""
    with torch.no_grad(), eval_mode(model):
        z_q, _, _, _ = quantize(model.encoder(x), model.codebook)
        out = model.decoder(z_q)
    n = len(x)
    grid = torch.cat([torch.cat(list(x[:, 0].cpu()), 1), torch.cat(list(out[:, 0].cpu()), 1)], 0)
    axes.imshow(grid.clamp(-1, 1).numpy(), cmap="gray_r", vmin=-1, vmax=1)
    axes.set(xticks=[], yticks=[], title=f"{label}: {n} held-out images (top), reconstructed")


def draw_curves(axes, evals: list[dict], label: str) -> None:
    axes[0].plot([e["step"] for e in evals], [e["recon_mse"] for e in evals], marker="o", ms=3,
                 label=label)
    axes[0].set(xlabel="step", ylabel="held-out reconstruction MSE", yscale="log")
    axes[1].plot([e["step"] for e in evals], [e["perplexity"] for e in evals], marker="o", ms=3,
                 label=label)
    axes[1].set(xlabel="step", ylabel="codebook perplexity (max K)")
    for ax in axes:
        ax.legend(fontsize=8)


# --- training loop ------------------------------------------------------------------------------

def train(cfg) -> dict:
    cfg, device = prepare(cfg, validate, single_thread=lambda c: c.data.name == "digits")
    xt, xv = (t.to(device) for t in load_data(cfg))
    stages = 1 if xt.shape[-1] <= 8 else 2
    if xt.shape[-1] % 2**stages:
        raise ConfigError(f"data.image_size={xt.shape[-1]} must be a multiple of {2**stages}")
    model = VQVAE(xt.shape[1], cfg.hidden, cfg.code_dim, cfg.codebook_size, stages).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batches = images.IndexBatches(len(xt), cfg.batch_size, torch.Generator().manual_seed(cfg.seed))
    quantizer = BY_MISTAKE[cfg.mistake]
    # for each code, the steps since a vector last chose it
    usage = Counters(idle=torch.zeros(cfg.codebook_size, dtype=torch.long, device=device),
                     revived=0)
    stateful = {"model": model, "optimizer": optimizer, "batches": batches, "usage": usage}
    codebook_at_start, start = state_hash_of(model.codebook), model.codebook.detach().clone()
    probe = Probe(device)
    with Loop(cfg, EXAMPLE.name, stateful, device, cfg.data.name) as loop:
        if loop.finished_summary:
            return loop.finished_summary
        if not loop.evals:  # step 0: the untrained model, the baseline
            loop.evals.append({"step": 0, **evaluate(model, xv, cfg.codebook_size)})
        for _ in loop:
            x = xt[next(batches).to(device)]
            with probe.step(sampled=False):
                z_q, codes, codebook_loss, commitment_loss = quantizer(model.encoder(x),
                                                                       model.codebook)
                reconstruction = vq_step(model, optimizer, x, z_q, codebook_loss,
                                         commitment_loss, cfg.beta)
                if cfg.revive_after and loop.step > cfg.revive_warmup:
                    usage.revived += revive_dead_codes(model.codebook, usage.idle, codes,
                                                       model.encoder, x, cfg.revive_after)
            if loop.due(cfg.log_every):
                loop.log(losses={"recon_loss": reconstruction})
            if loop.due(cfg.eval_every, final=True):
                loop.evaluated(**evaluate(model, xv, cfg.codebook_size))
        label = f"mistake={cfg.mistake}"
        plots.figure(loop.run.path("curves.png"), draw_curves, loop.evals, label, panels=2,
                     size=(9, 3.2))
        plots.figure(loop.run.path("reconstructions.png"), draw_reconstructions, model, xv[:12],
                     label, size=(9, 2.2))
        last = loop.evals[-1]
        return loop.summary(
            data=cfg.data.name, steps=cfg.steps, codebook_size=cfg.codebook_size,
            recon_mse=last["recon_mse"], recon_mse_at_start=loop.evals[0]["recon_mse"],
            perplexity=last["perplexity"], codes_used=last["codes_used"],
            codebook_unchanged=state_hash_of(model.codebook) == codebook_at_start,
            codebook_moved=float((model.codebook.detach() - start).pow(2).mean().sqrt()),
            encoder_output_rms=encoder_rms(model, xv), codes_revived=usage.revived,
            steps_per_sec=probe.units_per_sec, curve=loop.evals)


@torch.no_grad()
def encoder_rms(model, xv) -> float:
    """The encoder's output scale on the held-out images (the commitment weight sets it)."""
    return float(model.encoder(xv[:512]).pow(2).mean().sqrt())


def state_hash_of(parameter: torch.Tensor) -> str:
    """The codebook's digest: proof that it moved, or that it did not move at all."""
    holder = nn.Module()
    holder.p = nn.Parameter(parameter.detach().clone(), requires_grad=False)
    return state_hash(holder)


# --- what the tour and `python -m gallery show vqvae` read ------------------------------------

def headline(s: dict) -> str:
    return (f"held-out reconstruction MSE {s['recon_mse']:.4f} (untrained "
            f"{s['recon_mse_at_start']:.3f}), perplexity {s['perplexity']:.1f} of "
            f"{s['codebook_size']}, codes used {s['codes_used']:.0%}, codebook unchanged: "
            f"{s['codebook_unchanged']}")


def measured(gate: dict, bench: dict) -> Measured:
    runs = gate["runs"]
    mse = {m: avg(runs[m], "recon_mse") for m in ("none", "no_straight_through")}
    return Measured(
        (f"held-out MSE {mse['none']:.3f}, perplexity {avg(runs['none'], 'perplexity'):.0f} of 32",
         f"no_straight_through: MSE {mse['no_straight_through']:.3f}, perplexity "
         f"{avg(runs['no_straight_through'], 'perplexity'):.0f}; codebook_on_st: codebook never "
         "moves"),
        Panel("held-out reconstruction MSE", mse["none"], mse["no_straight_through"],
              "no_straight_through"),
        cost_of("no_straight_through", runs["none"], runs["no_straight_through"],
                "time: scripts/gates.py vqvae, seeds 0-2, the same steps each", "steps_per_sec"))


def draw_usage_by_size(runs: dict, first: dict, fig) -> None:
    """Codes used and reconstruction against the codebook size, the shipped default against no
    revival: the mean over seeds, and each seed as a dot."""
    axes = [fig.add_subplot(1, 2, i) for i in (1, 2)]
    for remedy, label in (("", "the default (revive_after=200, revive_warmup=500)"),
                          (" no revival", "no revival (revive_after=0)")):
        sizes = [k for k in (32, 128, 256, 512) if f"K={k}{remedy}" in runs]
        for ax, key in zip(axes, ("codes_used", "recon_mse")):
            line, = ax.plot(sizes, [avg(runs[f"K={k}{remedy}"], key) for k in sizes], marker="o",
                            label=label)
            for k in sizes:
                ax.scatter([k] * len(runs[f"K={k}{remedy}"]),
                           [r[key] for r in runs[f"K={k}{remedy}"]], s=8,
                           color=line.get_color(), alpha=0.5)
    for ax, name in zip(axes, ("share of the codes used", "held-out reconstruction MSE")):
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
        ax.set(xlabel="codebook size K", ylabel=name, xticks=[32, 128, 256, 512],
               xticklabels=["32", "128", "256", "512"])
    axes[0].legend(fontsize=7)


QUICK = ["steps=30", "eval_every=30", "log_every=15"]
NO_REVIVAL = ("revive_after=0",)  # for the mistakes: revival would re-seed what they leave dead
EXAMPLE = Example(
    name="vqvae",
    pattern="the straight-through estimator z + (e - z).detach(), with the codebook loss on sg[z] "
            "and the commitment loss on sg[e]",
    pattern_functions=("quantize", "vq_step", "code_usage", "revive_dead_codes"),
    mistakes={
        "codebook_on_st": Mistake(
            "codebook and commitment losses computed on the straight-through output",
            "the codebook gets no gradient: with revive_after=0 it ends bit-for-bit as it "
            "started while the reconstruction loss still falls; at the defaults only revival "
            "moves it, and the reconstruction can blow up",
            ("quantize_codebook_on_st",),
            caught=("gets_grad: no backward inside the block wrote a non-zero grad "
                    "into codebook"),
        ),
        "no_straight_through": Mistake(
            "the decoder reads the snapped codes e, with no straight-through line",
            "the encoder learns only from the commitment term; the codes collapse to one and "
            "reconstruction is far worse at the same budget (measured)",
            ("quantize_no_straight_through",),
            caught=("gets_grad: no backward inside the block wrote a non-zero "
                    "grad into encoder"),
        ),
        "no_sg_codebook": Mistake(
            "the codebook loss mse(e, z) with no stop-gradient on z",
            "the codebook loss pulls the encoder too, with weight 1 against beta's 0.25: beta no "
            "longer sets how hard the encoder commits; on digits that costs no reconstruction, "
            "but the encoder's outputs shrink to about half their scale and the codebook moves "
            "less (measured)",
            ("quantize_no_sg_codebook",),
            caught="no_grad_reaches: a backward wrote a grad into encoder",
        ),
    },
    budgets={"full": {m: [] if m == "none" else list(NO_REVIVAL) for m in BY_MISTAKE},
             "quick": {m: QUICK for m in BY_MISTAKE}},
    headline=headline,
    figure=plots.curves_by_run(draw_curves, panels=2),
    figure_size=(9, 3.4),
    check=lambda s: None if not s["codebook_unchanged"] else "the codebook never moved",
    smoke=("steps=6", "eval_every=3", "log_every=3", "batch_size=32"),
    report=("recon_mse", "perplexity", "codes_used", "codebook_unchanged", "steps_per_sec"),
    limits="At the default 32 codes every code is used. Past that, most codes die unless they "
           "are revived, which the default does (the page's usage-by-size figure, from "
           "scripts/gates.py vqvae_sizes): after a warm-up of revive_warmup steps, a code no "
           "vector chose for revive_after steps is re-seeded from the encoder's outputs. The "
           "warm-up keeps it from reseeding codes that are still settling, which at 32 codes "
           "cost reconstruction; revive_after=0 switches revival off.",
    order=7,
    gate=Gate(
        "digits, the default config, seeds 0-2, no_sg_codebook measured beside the others. The "
        "mistakes run with revive_after=0 (at 32 codes the pattern revives none, so it is the "
        "same run either way): revival re-seeds the codes a mistake leaves dead, which hides "
        "codebook_on_st's frozen codebook and then blows up its reconstruction",
        runs={"none": Runs(), **{m: Runs(m, overrides=NO_REVIVAL) for m in
                                 ("no_straight_through", "codebook_on_st", "no_sg_codebook")}},
        keys=("recon_mse", "recon_mse_at_start", "perplexity", "codes_used", "codebook_unchanged",
              "codebook_moved", "encoder_output_rms", "steps_per_sec"),
        criteria=(
            Criterion("the pattern's held-out reconstruction MSE is at least 30% below "
                      "no_straight_through's on the same seed, using at least half of the K codes",
                      ("none", "no_straight_through"), each(
                          lambda p, m: p["recon_mse"] <= 0.7 * m["recon_mse"]
                          and p["codes_used"] >= 0.5 and not p["codebook_unchanged"])),
            Criterion("codebook_on_st ends with its codebook bit for bit as it started, while its "
                      "reconstruction still falls", ("codebook_on_st",), each(
                          lambda r: r["codebook_unchanged"]
                          and r["recon_mse"] < r["recon_mse_at_start"])),
            Criterion("each run under 2 minutes", ("none", "no_straight_through", "codebook_on_st",
                                                   "no_sg_codebook"), each(
                lambda *rows: max(r["wall_seconds"] for r in rows) < 120), timed=True)),
        figure_runs=("none", "no_straight_through", "codebook_on_st", "no_sg_codebook"),
        figure_title="vqvae on digits, default config, seed 0"),
    more_gates={"sizes": Gate(
        "digits, seeds 0-2, 32-512 codes, the shipped default against no revival",
        runs={f"K={k}{' no revival' * off}": Runs(overrides=(f"codebook_size={k}",
                                                            *(("revive_after=0",) * off)))
              for off in (0, 1) for k in (32, 128, 256, 512)},
        keys=("recon_mse", "perplexity", "codes_used", "codes_revived", "steps_per_sec"),
        criteria=(
            Criterion("at 256 and 512 codes the default revives codes and keeps at least half of "
                      "them in use on every seed", ("K=256", "K=512"), each(
                          lambda *rows: all(r["codes_used"] >= 0.5 and r["codes_revived"] > 0
                                            for r in rows))),
            Criterion("at 32 codes its mean reconstruction error is within 1% of no revival's",
                      ("K=32", "K=32 no revival"), lambda on, off: avg(on, "recon_mse")
                      <= 1.01 * avg(off, "recon_mse"))),
        rows_figure=draw_usage_by_size, figure_file="vqvae_sizes.png",
        figure_title="vqvae on digits, seeds 0-2: code usage as the codebook grows")},
    measured=measured,
)


if __name__ == "__main__":
    command_line(EXAMPLE, train)
