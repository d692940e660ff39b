"""`scripts/bench.py chain`: the RL nets with and without the per-layer hook dispatch, whole train()
calls in turn."""

from __future__ import annotations

import statistics
import tempfile
import time

import torch

from scripts.measure.timing import config


def bench_chain(device: torch.device) -> list[dict]:
    """dqn's and ppo's whole train() with their nets made hookless (gallery.nets.Chain: each
    layer's forward called directly), against the same train() on plain nn.Sequential, in turns,
    3 pairs each; the median of the per-pair ratios."""

    from gallery import dqn, ppo
    from gallery.nets import hookless

    runs = {"dqn": (dqn, ["steps=20000", "stop_when_solved=false", "eval_every=20000",
                          "eval_episodes=2"]),
            "ppo": (ppo, ["steps=20480", "stop_when_solved=false", "eval_every=20480",
                          "eval_episodes=2", "value_check_episodes=0"])}
    rows = []
    for name, (module, overrides) in runs.items():
        ratios, seconds = [], {"plain": [], "hookless": []}
        for pair in range(3):
            for side, wrap in (("plain", lambda m: m), ("hookless", hookless)):
                module.hookless = wrap
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    module.train(config(name, f"device={device}", f"seed={pair}", *overrides,
                                        f"out_dir={tmp}/run"))
                    seconds[side].append(time.perf_counter() - start)
            module.hookless = hookless
            ratios.append(seconds["plain"][-1] / seconds["hookless"][-1])
        rows.append({"example": name, "steps": overrides[0].split("=")[1],
                     "plain_seconds_median": statistics.median(seconds["plain"]),
                     "hookless_seconds_median": statistics.median(seconds["hookless"]),
                     "speedup_hookless_over_plain": statistics.median(ratios),
                     "pair_ratios": [round(r, 3) for r in ratios]})
    return rows
