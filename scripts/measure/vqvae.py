"""`scripts/bench.py vqvae`: the gallery's VQ-VAE against vector-quantize-pytorch (installed with
pip --target --no-deps, never a dependency)."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gallery.core.cli import compose
from gallery.core.config import to_schema
from scripts.measure.peers import peer_path
from scripts.measure.timing import sync

VQ_PEER_DEPS = ("vector-quantize-pytorch", "einops", "einx", "frozendict", "loguru",
                "torch-einops-utils")  # --no-deps: the peer runs on the project's own torch


def vq_peer_path() -> Path | None:
    """vector-quantize-pytorch and what it imports, installed once with pip --target into the
    gallery's cache (never a dependency of the gallery); None when it cannot be installed."""
    return peer_path("vq", VQ_PEER_DEPS)


def bench_vqvae(device: torch.device, seeds: int = 3) -> list[dict]:
    """The gallery's `quantize` against vector-quantize-pytorch's VectorQuantize in its place: the
    same encoder and decoder, digits, seeds, steps, batches and Adam, one thread each. At the
    default 32 codes the library runs twice: with a codebook learned by gradient (as the
    gallery's) and with its default EMA codebook. At 256 codes, where codes die, each side runs
    its dead-code remedy: the gallery's revive_after=200, the library's EMA codebook with
    threshold_ema_dead_code=2. Per seed the sides train in turn; steps/s is the training loop's
    own (evaluation aside); the figures are medians over seeds."""
    from gallery import vqvae as vq
    from gallery.data import images

    deps = vq_peer_path()
    if deps is None:
        return [{"skipped": "vector-quantize-pytorch could not be installed (no package index?)"}]
    sys.path.insert(0, str(deps))
    from vector_quantize_pytorch import VectorQuantize

    cfg = to_schema(compose("vqvae", ["device=cpu"]))
    xt, xv = (t.to(device) for t in vq.load_data(cfg))
    torch.set_num_threads(1)

    def library(size: int, ema: bool, dead: int):
        return VectorQuantize(dim=cfg.code_dim, codebook_size=size, commitment_weight=cfg.beta,
                              accept_image_fmap=True, learnable_codebook=not ema, ema_update=ema,
                              threshold_ema_dead_code=dead).to(device)

    def run(side: str, seed: int, size: int, revive_after: int, dead: int) -> dict:
        torch.manual_seed(seed)
        model = vq.VQVAE(xt.shape[1], cfg.hidden, cfg.code_dim, size, 1).to(device)
        peer = None if side == "gallery" else library(size, side == "library_ema", dead)
        params = [*model.parameters(), *(peer.parameters() if peer is not None else [])]
        optimizer = torch.optim.Adam([p for p in params if p.requires_grad], lr=cfg.lr)
        batches = images.IndexBatches(len(xt), cfg.batch_size,
                                      torch.Generator().manual_seed(seed))
        idle = torch.zeros(size, dtype=torch.long, device=device)
        sync(device)
        start = time.perf_counter()
        for _ in range(cfg.steps):
            x = xt[next(batches).to(device)]
            if peer is None:
                z_q, codes, codebook_loss, commitment_loss = vq.quantize(model.encoder(x),
                                                                         model.codebook)
                vq.vq_step(model, optimizer, x, z_q, codebook_loss, commitment_loss, cfg.beta)
                if revive_after:
                    vq.revive_dead_codes(model.codebook, idle, codes, model.encoder, x,
                                         revive_after)
                continue
            z_q, _, vq_loss = peer(model.encoder(x))
            loss = F.mse_loss(model.decoder(z_q), x) + vq_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            model.eval()
            z = model.encoder(xv)
            if peer is None:
                z_q, codes, _, _ = vq.quantize(z, model.codebook)
            else:
                peer.eval()
                z_q, codes, _ = peer(z)
            mse = float(F.mse_loss(model.decoder(z_q), xv))
        perplexity, used = vq.code_usage(codes, size)
        return {"steps_per_sec": cfg.steps / seconds, "recon_mse": mse, "perplexity": perplexity,
                "codes_used": used}

    import vector_quantize_pytorch

    version = getattr(vector_quantize_pytorch, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("vector-quantize-pytorch")
    rows = []
    for size, sides, revive_after, dead, remedies in (
            (cfg.codebook_size, ("gallery", "library_learned", "library_ema"), 0, 0, ""),
            (256, ("gallery", "library_ema"), 200, 2,
             ", dead-code remedies on: the gallery's revive_after=200, the library's "
             "threshold_ema_dead_code=2")):
        runs = {side: [] for side in sides}
        for seed in range(seeds):
            for side in sides:
                runs[side].append(run(side, seed, size, revive_after, dead))
                print(f"  vqvae K={size} {side} seed={seed}: {runs[side][-1]}", flush=True)
        med = {side: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
               for side, rows in runs.items()}
        row = {"setting": f"digits, {cfg.steps} steps, batch {cfg.batch_size}, K={size}"
                          f"{remedies}, seeds 0-{seeds - 1}, 1 thread, medians",
               "peer": f"vector-quantize-pytorch {version}", "codebook_size": size}
        for side in sides:
            row.update({f"{side}_{k}": v for k, v in med[side].items()})
        for side in sides[1:]:
            row[f"speed_gallery_over_{side}"] = med["gallery"]["steps_per_sec"] / \
                med[side]["steps_per_sec"]
            row[f"recon_mse_gallery_over_{side}"] = med["gallery"]["recon_mse"] / \
                med[side]["recon_mse"]
        row.update({"target_speed": 1.5, "target_recon_mse_ratio": 1.1})
        rows.append(row)
    return rows
