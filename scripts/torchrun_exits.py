#!/usr/bin/env bash
# Runs on the project's venv, made on first use: bash runs the next line; to Python it is a string.
''''. "$(dirname -- "$0")/_bootstrap.sh"; exec "$VENV/bin/python" "$0" "$@" # '''

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gallery.core.registry import examples  # noqa: E402
from scripts.measure.gate import ONE_THREAD, torchrun_command  # noqa: E402

USAGE = """Consecutive two-process runs under torchrun, each exit status counted: a worker that
aborts at exit (std::terminate, SIGABRT) after a run that finished shows here as a run that did not
exit 0.

    scripts/torchrun_exits.py [--runs 50] [--load 1] [--json out.json] [example ...]

Each run is an example's seconds-long smoke config (EXAMPLE.smoke) on 2 gloo processes, the
examples taken in turn (default: every example whose smoke runs under DDP here: accumulate, gan,
finetune, tbptt). `--load N` keeps N busy processes spinning beside the runs, as on a loaded CI
machine. Exit status 1 when any run did not exit 0."""

DEFAULT = ("accumulate", "gan", "finetune", "tbptt")


def spin() -> None:
    while True:
        pass


def launch(example, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_command(example.name, 2, *example.smoke_overrides(out.parent),
                                           f"out_dir={out}"),
                          capture_output=True, text=True, cwd=ROOT, timeout=600, env=ONE_THREAD)


def main() -> int:
    parser = argparse.ArgumentParser(description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("examples", nargs="*", default=list(DEFAULT))
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--load", type=int, default=0, help="busy processes beside the runs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    known = examples()
    unknown = [name for name in args.examples if name not in known]
    if unknown:
        parser.exit(2, f"error: no example named {', '.join(unknown)}; choose from "
                       f"{', '.join(known)}\n")
    hogs = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.load)]
    for hog in hogs:
        hog.start()
    statuses: Counter = Counter()
    failures = []
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.runs):
                name = args.examples[i % len(args.examples)]
                proc = launch(known[name], Path(tmp) / str(i) / "run")
                statuses[proc.returncode] += 1
                aborted = "terminate called" in proc.stderr or "SIGABRT" in proc.stderr
                print(f"run {i + 1}/{args.runs} {name}: exit {proc.returncode}"
                      + (" (a worker aborted)" if aborted else ""), flush=True)
                if proc.returncode != 0:
                    failures.append({"run": i + 1, "example": name, "status": proc.returncode,
                                     "aborted": aborted, "stderr_tail": proc.stderr[-1500:]})
    finally:
        for hog in hogs:
            hog.terminate()
    result = {"runs": args.runs, "load": args.load, "examples": args.examples,
              "exit_statuses": {str(k): v for k, v in sorted(statuses.items())},
              "failures": failures, "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}))
    for failure in failures:
        print(f"--- run {failure['run']} ({failure['example']}), exit {failure['status']}:\n"
              f"{failure['stderr_tail']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
