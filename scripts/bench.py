#!/usr/bin/env bash
# Runs on the project's venv, made on first use: bash runs the next line; to Python it is a string.
''''. "$(dirname -- "$0")/_bootstrap.sh"; exec "$VENV/bin/python" "$0" "$@" # '''

from __future__ import annotations

import argparse
import json
import platform
import sys
import textwrap
from pathlib import Path

import torch

USAGE = """Speed and memory of each pattern against its mistake, as ratios measured side by side.

    scripts/bench.py [{benches}|all]
                     [--device cpu|cuda]
                     [--json results.json] [--cleanrl CLONE]

Times come from alternating blocks of the two variants in one process (median of the blocks), so a
ratio holds on the machine it ran on even when the absolute times drift. Bytes come from the
saved-tensor probe and are exact. It runs on the project's venv (scripts/bench.py makes it on
first use).
"""

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gallery.core.device import resolve_device  # noqa: E402
from scripts.measure.chain import bench_chain  # noqa: E402
from scripts.measure.check import bench_check  # noqa: E402
from scripts.measure.check_peers import bench_check_peers  # noqa: E402
from scripts.measure.cleanrl import bench_cleanrl  # noqa: E402
from scripts.measure.compile import bench_compile, bench_cuda_graphs  # noqa: E402
from scripts.measure.dqn import bench_dqn, bench_dqn_envs  # noqa: E402
from scripts.measure.evaluate import bench_evaluate  # noqa: E402
from scripts.measure.finetune import bench_finetune  # noqa: E402
from scripts.measure.gan import bench_gan  # noqa: E402
from scripts.measure.maml import bench_maml  # noqa: E402
from scripts.measure.processes import bench_smoke, bench_startup  # noqa: E402
from scripts.measure.rl_time import bench_ppo, bench_sac  # noqa: E402
from scripts.measure.sb3 import bench_sb3, merge_rows  # noqa: E402
from scripts.measure.tbptt import bench_tbptt  # noqa: E402
from scripts.measure.threads import bench_threads  # noqa: E402
from scripts.measure.timing import DEFAULT_THREADS, alternate  # noqa: E402
from scripts.measure.tour import bench_tour  # noqa: E402
from scripts.measure.trl_trainers import bench_trl  # noqa: E402
from scripts.measure.vqvae import bench_vqvae  # noqa: E402

BENCHES = {"gan": bench_gan, "dqn": bench_dqn, "finetune": bench_finetune, "ppo": bench_ppo,
           "sac": bench_sac, "dqn_envs": bench_dqn_envs, "tbptt": bench_tbptt,
           "threads": bench_threads, "smoke": bench_smoke, "compile": bench_compile,
           "startup": bench_startup, "cleanrl": bench_cleanrl,
           "cuda_graphs": bench_cuda_graphs, "vqvae": bench_vqvae, "chain": bench_chain,
           "sb3": bench_sb3, "check": lambda device: bench_check(device, alternate),
           "maml": bench_maml, "evaluate": bench_evaluate, "tour": bench_tour,
           "check_peers": lambda device: bench_check_peers(device, alternate), "trl": bench_trl}


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os

    return (f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, "
            f"torch's default {DEFAULT_THREADS} threads")


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def main() -> int:
    lines = [line.replace(" ", "|") for line in textwrap.wrap(" ".join(BENCHES), 72)]
    benches = "|\n                      ".join(lines)
    parser = argparse.ArgumentParser(description=USAGE.format(benches=benches),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="?", default="all", choices=[*BENCHES, "all"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--baseline", help="dqn: also time whole processes of this git ref against "
                                           "the checkout")
    parser.add_argument("--cleanrl", help="cleanrl: a local clone of github.com/vwxyzjn/cleanrl")
    parser.add_argument("--algos", help="sb3: some of dqn,ppo,a2c,sac (comma-separated); the "
                                        "others' rows in --json are kept")
    args = parser.parse_args()
    device = resolve_device(args.device)
    results = {"machine": machine(device), "torch": torch.__version__}
    for name in BENCHES if args.which == "all" else [args.which]:
        # a short .train() inside a bench may have set threads=auto
        torch.set_num_threads(DEFAULT_THREADS)
        print(f"## {name} ({results['machine']})", flush=True)
        extra = {"dqn": [args.baseline], "cleanrl": [args.cleanrl],
                 "sb3": [args.algos]}.get(name, [])
        rows = BENCHES[name](device, *extra)
        results[name] = rows
        for row in rows:
            for key, value in row.items():
                print(f"  {key}: {fmt(value)}")
            print()
    if args.json:  # merged: a bench run for one example keeps the others' entries
        merged = json.loads(args.json.read_text()) if args.json.exists() else {}
        if args.algos and "sb3" in results:  # the algorithms not run this time keep their rows
            results["sb3"] = merge_rows(merged.get("sb3", []), results["sb3"])
        merged.update(results)
        args.json.write_text(json.dumps(merged, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
