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
    same encoder and decoder, digits, seeds, steps, batches and Adam, one thread each. The library
    runs twice: with a codebook learned by gradient (as the gallery's) and with its default EMA
    codebook. Per seed the three train in turn; steps/s is the training loop's own (evaluation
    aside); the figures are medians over seeds."""
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

    def library(ema: bool):
        return VectorQuantize(dim=cfg.code_dim, codebook_size=cfg.codebook_size,
                              commitment_weight=cfg.beta, accept_image_fmap=True,
                              learnable_codebook=not ema, ema_update=ema).to(device)

    def run(side: str, seed: int) -> dict:
        torch.manual_seed(seed)
        model = vq.VQVAE(xt.shape[1], cfg.hidden, cfg.code_dim, cfg.codebook_size, 1).to(device)
        peer = None if side == "gallery" else library(ema=side == "library_ema")
        params = [*model.parameters(), *(peer.parameters() if peer is not None else [])]
        optimizer = torch.optim.Adam([p for p in params if p.requires_grad], lr=cfg.lr)
        batches = images.IndexBatches(len(xt), cfg.batch_size,
                                      torch.Generator().manual_seed(seed))
        sync(device)
        start = time.perf_counter()
        for _ in range(cfg.steps):
            x = xt[next(batches).to(device)]
            if peer is None:
                vq.vq_step(model, optimizer, x, cfg.beta)
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
        perplexity, used = vq.code_usage(codes, cfg.codebook_size)
        return {"steps_per_sec": cfg.steps / seconds, "recon_mse": mse, "perplexity": perplexity,
                "codes_used": used}

    sides = ("gallery", "library_learned", "library_ema")
    runs = {side: [] for side in sides}
    for seed in range(seeds):
        for side in sides:
            runs[side].append(run(side, seed))
            print(f"  vqvae {side} seed={seed}: {runs[side][-1]}", flush=True)
    med = {side: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
           for side, rows in runs.items()}
    import vector_quantize_pytorch

    version = getattr(vector_quantize_pytorch, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("vector-quantize-pytorch")
    row = {"setting": f"digits, default config ({cfg.steps} steps, batch {cfg.batch_size}, "
                      f"K={cfg.codebook_size}), seeds 0-{seeds - 1}, 1 thread, medians",
           "peer": f"vector-quantize-pytorch {version}"}
    for side in sides:
        row.update({f"{side}_{k}": v for k, v in med[side].items()})
    for side in sides[1:]:
        row[f"speed_gallery_over_{side}"] = med["gallery"]["steps_per_sec"] / \
            med[side]["steps_per_sec"]
        row[f"recon_mse_gallery_over_{side}"] = med["gallery"]["recon_mse"] / \
            med[side]["recon_mse"]
    row.update({"target_speed": 1.5, "target_recon_mse_ratio": 1.1})
    return [row]
