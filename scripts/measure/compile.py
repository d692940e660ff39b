"""`scripts/bench.py compile` and `cuda_graphs`: when torch.compile's warm-up pays, and CUDA
graphs."""

from __future__ import annotations

import statistics
import sys
import tempfile

import torch

from scripts.measure.timing import ROOT, process_seconds


def run_seconds(example: str, steps: int, compiled: bool, device: torch.device,
                *args: str) -> float:
    """One whole `python -m gallery.<example>` process, with an empty inductor cache (a cold
    compile, as on a new machine)."""
    with tempfile.TemporaryDirectory() as tmp:
        return process_seconds([sys.executable, "-m", f"gallery.{example}", f"steps={steps}",
                                f"eval_every={steps}", *args, f"compile={str(compiled).lower()}",
                                f"device={device}", "progress=false", f"out_dir={tmp}/run"], ROOT,
                               {"TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor"})


def bench_compile(device: torch.device) -> list[dict]:
    """compile=true against eager, whole processes of the tbptt character RNN (one model, compiled
    whole) at two lengths, each with an empty inductor cache: the difference at the short length is
    the cold warm-up; the per-chunk time between the lengths is what compiling buys once warm."""
    short, long, rounds = 10, 110, 3
    runs: dict = {}
    for _ in range(rounds):  # alternating, median of the rounds
        for n in (short, long):
            for c in (False, True):
                runs.setdefault((n, c), []).append(
                    run_seconds("tbptt", n, c, device, "log_every=10"))
    t = {key: statistics.median(values) for key, values in runs.items()}
    per_chunk = {c: (t[long, c] - t[short, c]) / (long - short) for c in (False, True)}
    return [{"setting": f"python -m gallery.tbptt, whole process, {short} and {long} chunks (the "
                        f"default model), median of {rounds} alternating rounds",
             "eager_seconds_short": t[short, False], "compiled_seconds_short": t[short, True],
             "warmup_seconds": t[short, True] - t[short, False],
             "eager_sec_per_chunk": per_chunk[False], "compiled_sec_per_chunk": per_chunk[True],
             "compiled_speedup_once_warm": per_chunk[False] / per_chunk[True]}]


def bench_cuda_graphs(device: torch.device, short: int = 1_500, long: int = 4_500) -> list[dict]:
    """gallery.sac with compile=true, which on CUDA replays each compiled net as a CUDA graph,
    against eager: whole processes at two lengths past the random warm-up (1,000 steps), one update
    per env step. The env steps/s between the two lengths leave out start-up and compilation. The
    aim (issue 27): >= 2x eager, as a small net's update on a GPU is bound by kernel launches."""
    if device.type != "cuda":
        return [{"skipped": "CUDA graphs replay on a GPU only: scripts/bench.py cuda_graphs "
                            "--device cuda"}]
    t = {(n, c): run_seconds("sac", n, c, device, "eval_episodes=1")
         for n in (short, long) for c in (False, True)}
    rate = {c: (long - short) / (t[long, c] - t[short, c]) for c in (False, True)}
    return [{"setting": f"python -m gallery.sac, whole processes of {short:,} and {long:,} env "
                        "steps, eager and compile=true",
             "eager_env_steps_per_sec": rate[False], "compiled_env_steps_per_sec": rate[True],
             "compile_seconds": t[short, True] - t[short, False],
             "compiled_over_eager": rate[True] / rate[False], "target": 2.0}]
