#!/usr/bin/env bash
# Runs on the project's venv, made on first use: bash runs the next line; to Python it is a string.
''''. "$(dirname -- "$0")/_bootstrap.sh"; exec "$VENV/bin/python" "$0" "$@" # '''

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import yaml

USAGE = """Aggregate a Hydra sweep: a mean +/- std table per group of swept values, and one figure
per metric.

    scripts/sweep_report.py <multirun dir> [--metrics a,b,...] [--replicate seed] [--values]

Every job folder under the sweep dir holds `.hydra/overrides.yaml` (written when the job starts)
and, once it finishes, `summary.json`. Jobs are grouped by the overrides that differ between them,
except the replicate key (`seed`), whose values are pooled. A metric is any number in summary.json
(a swept key, the seed and the step count excepted), or those named with --metrics. Writes
<dir>/report.md and <dir>/report/<metric>.png, and prints the table. Jobs without a summary (still
running, interrupted, failed before the end) are counted, never silently dropped. --values also
lists each job's value in a cell, in replicate order: `2 +/- 1.41 (1, 3)`.
"""

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gallery.core import plots  # noqa: E402
from gallery.core.io import atomic_write  # noqa: E402

SKIP = {"seed", "steps", "world_size", "threads"}  # run settings every summary records, not results


def read_jobs(sweep: Path) -> list[dict]:
    jobs = []
    for overrides_file in sorted(sweep.glob("*/.hydra/overrides.yaml")):
        folder = overrides_file.parent.parent
        listed = yaml.safe_load(overrides_file.read_text()) or []
        overrides = dict(o.split("=", 1) for o in listed if "=" in o)
        summary_file = folder / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
        jobs.append({"folder": folder.name, "overrides": overrides, "summary": summary})
    return jobs


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mean_std(cells: list[float | None], listed: bool = False) -> str:
    """Mean +/- std of the numbers; `listed` adds every job's cell, a job without the number as
    '-'."""
    values = [v for v in cells if v is not None]
    shown = ", ".join("-" if v is None else f"{v:.4g}" for v in cells)
    each = f" ({shown})" if listed and len(cells) > 1 else ""
    if not values:
        return "-" + each
    spread = f" +/- {statistics.stdev(values):.3g}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.4g}{spread}{each}"


def replicate_order(job: dict, replicate: str) -> tuple:
    """Numbers in numeric order (seed 10 after seed 9), then any other values as text."""
    value = job["overrides"].get(replicate, "")
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def report(sweep: Path, metrics: list[str] | None, replicate: str, listed: bool = False) -> str:
    jobs = read_jobs(sweep)
    if not jobs:
        raise SystemExit(f"error: {sweep} holds no sweep jobs (no */.hydra/overrides.yaml); is it "
                         f"a -m output dir?")
    keys = sorted({k for job in jobs for k in job["overrides"]})
    swept = [k for k in keys if len({job["overrides"].get(k) for job in jobs}) > 1
             and k != replicate]
    finished = [job for job in jobs if job["summary"] is not None]
    if metrics is None:
        metrics = sorted({k for job in finished for k, v in job["summary"].items()
                          if is_number(v) and k not in SKIP and k not in keys and k != replicate})
    groups: dict[tuple, list[dict]] = {}
    for job in jobs:
        groups.setdefault(tuple(job["overrides"].get(k, "") for k in swept), []).append(job)

    header = [*swept, "jobs", "finished", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table = {}
    for group, members in sorted(groups.items()):
        members.sort(key=lambda job: replicate_order(job, replicate))
        done = [job["summary"] for job in members if job["summary"] is not None]
        values = {m: [job["summary"][m] if job["summary"] and is_number(job["summary"].get(m))
                      else None
                      for job in members] for m in metrics}  # None: a job without this number
        table[group] = values
        statuses = sorted({s.get("status", "finished") for s in done} - {"finished"})
        status = f"{len(done)}" + (f" ({', '.join(statuses)})" if statuses else "")
        lines.append("| " + " | ".join([*group, str(len(members)), status,
                                        *(mean_std(values[m], listed) for m in metrics)]) + " |")
    replicates = sorted({job["overrides"].get(replicate) for job in jobs} - {None})
    swept_text, pooled = ", ".join(swept) or "nothing", ", ".join(replicates) or "-"
    text = (f"# {sweep}\n\n{len(jobs)} jobs, {len(finished)} with a summary; swept: {swept_text}"
            f"; pooled over {replicate} = {pooled} (mean +/- sample std)\n\n" + "\n".join(lines)
            + "\n")

    figures = sweep / "report"
    figures.mkdir(exist_ok=True)
    labels = [", ".join(f"{k}={v}" for k, v in zip(swept, group)) or "all jobs"
              for group in sorted(table)]
    for metric in metrics:
        fig, ax = plots.pyplot().subplots(figsize=(max(4.0, 1.2 * len(labels)), 3.2))
        for i, group in enumerate(sorted(table)):
            values = [v for v in table[group][metric] if v is not None]
            if values:
                ax.bar(i, statistics.fmean(values),
                       yerr=statistics.stdev(values) if len(values) > 1 else 0, color="C0",
                       alpha=0.5, capsize=4)
                ax.scatter([i] * len(values), values, color="C0", s=12, zorder=3)
        ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 3 else 0, fontsize=8)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric}: mean +/- std over {replicate} (dots: jobs)", fontsize=9)
        plots.save(fig, figures / f"{metric}.png")
    atomic_write(sweep / "report.md", text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="the -m output dir (out_dir=..., or "
                                                 "multirun/<example>/<date>/<time>)")
    parser.add_argument("--metrics", help="comma-separated summary.json keys (default: every "
                                          "number in it)")
    parser.add_argument("--replicate", default="seed",
                        help="the key whose values are pooled (default: seed)")
    parser.add_argument("--values", action="store_true",
                        help="list each job's value after the mean, in replicate order")
    args = parser.parse_args()
    if not args.sweep.is_dir():
        print(f"error: {args.sweep} is not a folder", file=sys.stderr)
        return 2
    print(report(args.sweep, args.metrics.split(",") if args.metrics else None, args.replicate,
                 args.values))
    print(f"wrote {args.sweep / 'report.md'} and {args.sweep / 'report'}/<metric>.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
