"""`scripts/bench.py maml`: the gallery's MAML against `higher`'s (installed with pip --target
--no-deps, never a dependency; learn2learn does not build here): the same network, tasks, seeds,
meta-batch and number of meta-iterations, one thread each, in turn. Post-adaptation MSE on the
same held-out tasks after 10 inner steps, and meta-iterations per second."""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F

from gallery import maml
from gallery.core.seeding import seed_everything
from scripts.measure.peers import peer_path

HIGHER = ("higher==0.2.1",)


def gallery_loop(model, tasks_rng, steps, meta_batch, shots, inner_lr) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        tasks = maml.sine_tasks(meta_batch, shots, tasks_rng)
        maml.meta_step(model, optimizer, tasks,
                       maml.adapted_to(tasks, maml.adapt, model, inner_lr, 1))


def higher_loop(model, tasks_rng, steps, meta_batch, shots, inner_lr) -> None:
    import higher

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inner = torch.optim.SGD(model.parameters(), lr=inner_lr)
    for _ in range(steps):
        tasks = maml.sine_tasks(meta_batch, shots, tasks_rng)
        optimizer.zero_grad(set_to_none=True)
        for xs, ys, xq, yq, *_ in tasks:
            # copy_initial_weights=False: otherwise no meta-gradient reaches `model` (higher #69)
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fast, diff):
                diff.step(F.mse_loss(fast(xs), ys))
                (F.mse_loss(fast(xq), yq) / len(tasks)).backward()
        optimizer.step()


def bench_maml(device: torch.device, seeds: int = 3, steps: int = 2000) -> list[dict]:
    deps = peer_path("higher", HIGHER)
    if deps is None:
        return [{"setting": "maml: higher", "skipped": "higher would not install"}]
    sys.path.insert(0, str(deps))
    torch.set_num_threads(1)
    held_out = maml.sine_tasks(100, 10, torch.Generator().manual_seed(10_000))
    rows = {"gallery": [], "higher": []}
    for seed in range(seeds):
        for name, loop in (("gallery", gallery_loop), ("higher", higher_loop)):
            seed_everything(seed)
            model = maml.mlp(40)
            start = time.perf_counter()
            loop(model, torch.Generator().manual_seed(seed), steps, 10, 10, 0.01)
            seconds = time.perf_counter() - start
            rows[name].append({"mse_10_steps": maml.adapted_mse(model, held_out, 0.01, 10),
                               "meta_iterations_per_sec": steps / seconds})
            print(f"maml {name} seed={seed}: {rows[name][-1]}", flush=True)
    med = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
           for name, runs in rows.items()}
    return [{"setting": f"maml: sine tasks, 1-40-40-1 MLP, meta-batch 10, K=10, one inner step, "
                        f"{steps} meta-iterations, seeds 0-{seeds - 1}, 1 thread, medians",
             "peer": "higher 0.2.1 (innerloop_ctx, copy_initial_weights=False)",
             "gallery_mse_10_steps": med["gallery"]["mse_10_steps"],
             "higher_mse_10_steps": med["higher"]["mse_10_steps"],
             "gallery_meta_iterations_per_sec": med["gallery"]["meta_iterations_per_sec"],
             "higher_meta_iterations_per_sec": med["higher"]["meta_iterations_per_sec"],
             "speed_gallery_over_higher": med["gallery"]["meta_iterations_per_sec"]
             / med["higher"]["meta_iterations_per_sec"],
             "mse_gallery_over_higher": med["gallery"]["mse_10_steps"]
             / med["higher"]["mse_10_steps"],
             "target_speed": 1.5, "target_mse_ratio": 1.1}]
