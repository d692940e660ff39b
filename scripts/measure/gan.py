"""`scripts/bench.py gan`: the GAN's D step on fake.detach() against retain_graph, time and
bytes."""

from __future__ import annotations

import tempfile

import torch

from gallery.core.config import to_schema
from scripts.measure.timing import alternate, config


def bench_gan(device: torch.device) -> list[dict]:
    from gallery import gan

    rows = []
    for data in ("ring8", "digits"):
        cfg = to_schema(config("gan", f"data={data}", f"device={device}"))
        data_src = gan.build_data(cfg, device)
        states = {}
        for mistake in ("none", "retain_graph"):
            torch.manual_seed(0)
            g, d = gan.build_models(cfg, data_src, device)
            opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
            opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
            states[mistake] = (g, d, opt_g, opt_d)

        def iteration(mistake, states=states, data_src=data_src, cfg=cfg):
            g, d, opt_g, opt_d = states[mistake]

            def run():
                real = data_src.sample(cfg.batch_size)
                fake = g(torch.randn(len(real), cfg.z_dim, device=device))
                gan.BY_MISTAKE[mistake](d, opt_d, opt_g, real, fake, cfg.r1_gamma)

            return run

        secs = alternate({m: iteration(m) for m in states}, rounds=7, per_round=40, device=device)
        with tempfile.TemporaryDirectory() as tmp:
            short = {m: gan.train(config("gan", f"data={data}", f"device={device}", f"mistake={m}",
                                         "steps=2", "log_every=1", "eval_every=2",
                                         "eval_samples=64", f"out_dir={tmp}/{m}"))
                     for m in states}
        rows.append({
            "data": data,
            "pattern_ms_per_iter": secs["none"] * 1e3,
            "retain_graph_ms_per_iter": secs["retain_graph"] * 1e3,
            "time_ratio_retain_graph_over_pattern": secs["retain_graph"] / secs["none"],
            "pattern_d_step_saved_bytes": short["none"]["d_step_saved_bytes"],
            "retain_graph_d_step_saved_bytes": short["retain_graph"]["d_step_saved_bytes"],
            "pattern_iter_peak_saved_bytes": short["none"]["iter_peak_saved_bytes"],
            "retain_graph_iter_peak_saved_bytes": short["retain_graph"]["iter_peak_saved_bytes"],
        })
    return rows
