"""The tour: every pattern run next to its mistakes, with a report and figures.

    python -m gallery tour                   # about 10 minutes on a 2-core CPU
    python -m gallery tour budget=quick      # under a minute: tiny runs that show every path
    python -m gallery tour examples=[gan,tbptt] device=cuda

Writes `report.md`, `tour.json` and one comparison figure per example to the run dir, and each
run's own outputs below it (`<example>/<mistake>/`). Everything it knows of an example (budgets,
headline, figure, the mistakes' diffs) comes from that example's `EXAMPLE`.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from omegaconf import OmegaConf

from gallery import lessons
from gallery.core import plots
from gallery.core.cli import compose, run_cli
from gallery.core.config import config_dir, register_schema, require_choice
from gallery.core.errors import ConfigError, ExplainedMistake, GalleryError
from gallery.core.io import atomic_write
from gallery.core.registry import Example, examples
from gallery.core.run import resolve_out_dir


@register_schema("tour")
@dataclass
class TourConfig:
    budget: str = "full"  # full | quick
    examples: list[str] = field(default_factory=list)  # empty: every example
    device: str = "auto"
    seed: int = 0
    out_dir: str | None = None



def run_one(example: Example, mistake: str, overrides: list[str], cfg: TourConfig,
            out: Path) -> dict:
    """One run through the example's own config; a mistake that is known to raise is reported."""
    run_dir = out / example.name / mistake.replace("+", "_")
    composed = compose(example.name, [f"mistake={mistake}", f"device={cfg.device}",
                                      f"seed={cfg.seed}", f"out_dir={run_dir}", *overrides])
    start = time.perf_counter()
    try:
        summary, outcome = example.module.train(composed), "ran"
    except ConfigError as err:  # a mistake this run cannot show (two processes), refused
        if mistake == "none" or not example.mistakes[mistake].needs:
            raise
        summary, outcome = {"error": str(err)}, "not run"
    except ExplainedMistake as err:
        if mistake == "none":
            raise
        cause = str(err.__cause__).splitlines()[0]
        summary, outcome = {"error": str(err), "cause": cause}, "raised"
    return {**summary, "wall_seconds": time.perf_counter() - start, "outcome": outcome,
            "run_dir": str(run_dir), "overrides": overrides}


def tour(cfg) -> dict:
    cfg = cfg if isinstance(cfg, TourConfig) else OmegaConf.to_object(cfg)
    require_choice(cfg, "budget", ["full", "quick"])
    known = examples()
    for name in cfg.examples:
        if name not in known:
            raise ConfigError(f"examples: {name!r} is not an example; choose from "
                              f"{', '.join(known)}")
    out = resolve_out_dir(cfg.out_dir, "tour")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for name in cfg.examples or list(known):
        example, results[name] = known[name], {}
        for mistake, overrides in example.budgets[cfg.budget].items():
            print(f"[tour] {name}: {'pattern' if mistake == 'none' else f'mistake={mistake}'} ...",
                  flush=True)
            results[name][mistake] = run_one(example, mistake, overrides, cfg, out)
            if mistake != "none":
                m = example.mistakes[mistake]
                print(f"        {m.description}\n        expected: {m.consequence}", flush=True)
            print(f"        {headline(example, results[name][mistake], mistake)}", flush=True)
        fig = plots.pyplot().figure(figsize=example.figure_size)
        example.figure(results[name], fig)
        fig.suptitle(f"{name}: pattern vs mistake", fontsize=10)
        plots.save(fig, out / f"{name}.png")
    print("[tour] lessons ...", flush=True)
    taught = lessons.run(out=io.StringIO())
    record = json.dumps({**results, "lessons": taught}, indent=2, default=str)
    atomic_write(out / "tour.json", record + "\n")
    atomic_write(out / "report.md", report(results, known, cfg, taught))
    print(f"[tour] report: {out / 'report.md'}")
    broken = [f"{name}: {problem}" for name, runs in results.items()
              if (problem := known[name].check(runs["none"]) if "none" in runs else None)]
    broken += [f"lesson {name}: {shown}" for name, (passed, shown) in taught.items() if not passed]
    if broken:
        raise TourFailed("the tour's checks failed: " + "; ".join(broken))
    return results


class TourFailed(GalleryError):
    """A pattern's probe or a lesson failed: the tour is a check, not only a demo."""


def headline(example: Example, s: dict, mistake: str = "none") -> str:
    if s["outcome"] == "raised":
        return f"raised, as expected: {s['cause'].split('. ')[0].split(' (or ')[0]}"
    needs = example.mistakes[mistake].needs if mistake != "none" else ""
    if s["outcome"] == "not run":
        return f"not run here: this mistake shows only with {needs}"
    shown = f"{example.headline(s)} ({s['wall_seconds']:.1f} s)"
    return f"{shown}; this mistake shows only with {needs}" if needs else shown


def report(results: dict, known: dict, cfg: TourConfig, taught: dict) -> str:
    devices = sorted({s["device"] for runs in results.values() for s in runs.values()
                      if "device" in s})
    device = ", ".join(devices) or cfg.device
    lines = [f"# Detach Gallery tour (budget={cfg.budget}, seed={cfg.seed}, device={device})", ""]
    if cfg.budget == "quick":
        lines += ["Quick budget: tiny runs that prove every path; their timings and results mean "
                  "nothing.", ""]
    for name, runs in results.items():
        example = known[name]
        lines += [f"## {name}: {example.pattern}", "", f"![{name}]({name}.png)", "",
                  "| run | budget | what it does | expected | measured |", "|---|---|---|---|---|"]
        for mistake, s in runs.items():
            what = "the pattern" if mistake == "none" else example.mistakes[mistake].description
            expected = "" if mistake == "none" else example.mistakes[mistake].consequence
            ran = s.get("env_steps", s.get("steps"))
            budget = ("stopped by its error" if s["outcome"] == "raised" else
                      "refused in one process" if s["outcome"] == "not run" else
                      f"{ran:,} steps on {s['device']}" if ran is not None else s["device"])
            budget += f" (`{' '.join(s['overrides'])}`)" if s["overrides"] else " (defaults)"
            lines.append(f"| `{mistake}` | {budget} | {what} | {expected} | "
                         f"{headline(example, s, mistake)} |")
        lines += ["", "The mistakes, each as the diff that fixes it (`python -m gallery show "
                  f"{name}` prints the pattern functions too):", ""]
        for mistake in runs:
            for variant in example.mistakes[mistake].variants if mistake != "none" else ():
                lines += ["```diff", *example.diff(variant), "```", ""]
    lines += ["## The lessons (`python -m gallery lessons`)", "",
              "| lesson | claim | measured | |", "|---|---|---|---|"]
    for name, (passed, shown) in taught.items():
        claim, verdict = lessons.claim(lessons.LESSONS[name]), "PASS" if passed else "FAIL"
        lines.append(f"| `{name}` | {claim} | {shown} | {verdict} |")
    return "\n".join(lines) + "\n"


@hydra.main(version_base="1.3", config_path=config_dir("tour"), config_name="tour")
def main(cfg) -> None:
    run_cli(tour, cfg)


if __name__ == "__main__":
    main()
