#!/usr/bin/env bash
# Runs on the project's venv, made on first use: bash runs the next line; to Python it is a string.
''''. "$(dirname -- "$0")/_bootstrap.sh"; exec "$VENV/bin/python" "$0" "$@" # '''

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gallery.core.registry import examples  # noqa: E402
from scripts.measure.gate import gates, run_gate  # noqa: E402

GATES = gates(examples())

USAGE = f"""The learning gates in full, at fixed seeds, with each run's wall time on this machine.

    scripts/gates.py [{'|'.join([*GATES, 'all'])}]
                     [--json gates.json] [--figures DIR] [--keep DIR]

Each example declares its gate in its own file (EXAMPLE.gate: what it runs, its seeds, and its
criteria, each a sentence and the predicate that decides it). tests/test_learning.py holds each
gate's criteria on seed 0, all but the bounds on wall time; this script runs every seed a gate
names, one run after another, so the wall times are the ones a user would see, and prints each
criterion that does not hold. --json updates the named gates' entries in the file and keeps the
others.

""" + "\n".join(textwrap.fill(f"{name}: {gate.text}", 98, initial_indent="  ",
                                subsequent_indent="      ") for name, (_, gate) in GATES.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="?", default="all", choices=[*GATES, "all"])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--figures", type=Path, help="write each gate's figures here")
    parser.add_argument("--keep", type=Path, help="write the runs under this folder, empty or new, "
                                                  "and keep them (default: a temp dir)")
    args = parser.parse_args()
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.exit(2, f"error: --keep {args.keep} is not empty: a gate starts from a fresh "
                       "folder (pretrained backbones, sweep outputs); pick an empty one\n")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in GATES if args.which == "all" else [args.which]:
            example, gate = GATES[name]
            results[name] = run_gate(name, example, gate, args.keep or Path(tmp), args.figures)
            print(f"## {name}: {'PASS' if results[name]['pass'] else 'FAIL'}", flush=True)
    if args.json:  # the gates run now replace their own entries; the others stay as they were
        kept = json.loads(args.json.read_text()) if args.json.is_file() else {}
        args.json.write_text(json.dumps({**kept, **results}, indent=2) + "\n")
        others = ", ".join(k for k in kept if k not in results) or "nothing"
        print(f"{args.json}: wrote {', '.join(results)}; kept {others}")
    return 0 if all(r["pass"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
