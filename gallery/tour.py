"""The tour: every pattern run next to its mistakes, with a report and figures.

    python -m gallery tour                   # about 10 minutes on a 2-core CPU
    python -m gallery tour budget=quick      # a minute: tiny runs that exercise every path
    python -m gallery tour examples=[gan,tbptt] device=cuda

Writes `report.md`, `tour.json` and one comparison figure per example to the run dir, and each
run's own outputs below it (`<example>/<mistake>/`).
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from gallery import tour_figures
from gallery.core.config import register_schema, require_choice, run_cli
from gallery.core.errors import ConfigError, ExplainedMistake
from gallery.core.registry import examples
from gallery.core.run import atomic_write_text, resolve_out_dir

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# Overrides per example and budget: "full" is sized to show each consequence clearly on a
# 2-core CPU; "quick" only proves every path runs (CI and smoke tests).
BUDGETS = {
    "full": {
        "gan": {"none": [], "retain_graph": [], "retain_graph_shared_zero_grad": [],
                "no_detach": ["steps=10"], "reuse_d_output": ["steps=10"]},
        "dqn": {"none": ["stop_when_solved=false", "steps=30000"],
                "no_target": ["stop_when_solved=false", "steps=30000"],
                "target_grad": ["steps=3000"], "no_target+target_grad": ["steps=3000"]},
        "finetune": {"none": [], "no_freeze": [], "bn_train": []},
        "tbptt": {"none": [], "retain_graph": ["retain_graph_max_chunks=40"], "no_detach": ["steps=5"]},
    },
    "quick": {
        "gan": {m: ["steps=20", "eval_every=20", "log_every=10", "hidden=32", "eval_samples=500"]
                for m in ("none", "retain_graph", "retain_graph_shared_zero_grad", "no_detach", "reuse_d_output")},
        "dqn": {m: ["steps=600", "learning_starts=200", "eval_every=300", "eval_episodes=2", "hidden=32"]
                for m in ("none", "no_target", "target_grad", "no_target+target_grad")},
        "finetune": {m: ["steps=20", "eval_every=10", "log_every=10", "backbone.pretrain_steps=40"]
                     for m in ("none", "no_freeze", "bn_train")},
        "tbptt": {m: ["steps=12", "eval_every=12", "log_every=6", "hidden=32", "retain_graph_max_chunks=12"]
                  for m in ("none", "retain_graph", "no_detach")},
    },
}


@dataclass
class TourConfig:
    budget: str = "full"  # full | quick
    examples: list[str] = field(default_factory=lambda: ["gan", "dqn", "finetune", "tbptt"])
    device: str = "auto"
    seed: int = 0
    out_dir: str | None = None


register_schema("tour", TourConfig)


def run_one(example: str, mistake: str, overrides: list[str], cfg: TourConfig, out: Path) -> dict:
    """One run through the example's own config; a mistake that is known to raise is reported."""
    module = importlib.import_module(f"gallery.{example}")
    run_dir = out / example / mistake.replace("+", "_")
    overrides = [f"mistake={mistake}", f"device={cfg.device}", f"seed={cfg.seed}", f"out_dir={run_dir}", *overrides]
    if GlobalHydra.instance().is_initialized():  # inside `@hydra.main`
        composed = compose(config_name=example, overrides=overrides)
    else:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
            composed = compose(config_name=example, overrides=overrides)
    start = time.perf_counter()
    try:
        summary = module.train(composed)
        outcome = "ran"
    except ExplainedMistake as err:
        if mistake == "none":
            raise
        summary, outcome = {"error": str(err), "cause": str(err.__cause__).splitlines()[0]}, "raised"
    summary["wall_seconds"] = time.perf_counter() - start
    summary["outcome"] = outcome
    summary["run_dir"] = str(run_dir)
    return summary


def tour(cfg) -> dict:
    cfg = cfg if isinstance(cfg, TourConfig) else OmegaConf.to_object(cfg)
    require_choice(cfg, "budget", BUDGETS)
    known = examples()
    for name in cfg.examples:
        if name not in known:
            raise ConfigError(f"examples: {name!r} is not an example; choose from {', '.join(known)}")
    out = resolve_out_dir(cfg.out_dir, "tour")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for name in cfg.examples:
        example = known[name]
        results[name] = {}
        for mistake, overrides in BUDGETS[cfg.budget][name].items():
            label = "pattern" if mistake == "none" else f"mistake={mistake}"
            print(f"[tour] {name}: {label} ...", flush=True)
            results[name][mistake] = run_one(name, mistake, overrides, cfg, out)
            if mistake != "none":
                m = example.mistakes[mistake]
                print(f"        {m.description}\n        expected: {m.consequence}", flush=True)
            print(f"        {headline(name, results[name][mistake])}", flush=True)
        tour_figures.draw(name, results[name], out)
    atomic_write_text(out / "tour.json", json.dumps(results, indent=2, default=str) + "\n")
    atomic_write_text(out / "report.md", report(results, known, cfg))
    print(f"[tour] report: {out / 'report.md'}")
    return results


def headline(example: str, s: dict) -> str:
    if s["outcome"] == "raised":
        return f"raised, as expected: {s['cause'][:110]}"
    if example == "gan":
        return (f"modes {s.get('modes_covered')}/8, high quality {s.get('high_quality_frac', 0):.2f}, "
                f"grad written into G by the D step {s['g_grad_norm_after_d_step']:.3g}, "
                f"D-step saved bytes {s['d_step_saved_bytes']:,}, {s['sec_per_step'] * 1e3:.2f} ms/step")
    if example == "dqn":
        return (f"eval return {s['eval_return_mean']}, first solved at {s['first_solved_step']}, "
                f"target grads seen: {s['target_grad_seen']}, saved bytes/update {s['saved_bytes_per_update']:,}")
    if example == "finetune":
        old = "n/a" if s["old_task_acc"] is None else f"{s['old_task_acc']:.3f}"
        return (f"val_acc {s['val_acc']:.3f}, pretraining-task acc {old}, "
                f"backbone unchanged: {s['backbone_unchanged']}, "
                f"{s['sec_per_step'] * 1e3:.2f} ms/step, saved bytes/step {s['saved_bytes_per_step']:,}")
    saved = s["saved_bytes_per_chunk"]
    bpc = "" if s["val_bpc"] is None else f"val BPC {s['val_bpc']:.3f}, "
    return f"{bpc}bytes held for backward: chunk 1 {saved[0]:,}, chunk {len(saved)} {saved[-1]:,}"


def report(results: dict, known: dict, cfg: TourConfig) -> str:
    lines = [f"# Detach Gallery tour (budget={cfg.budget}, seed={cfg.seed}, device={cfg.device})", ""]
    for name, runs in results.items():
        example = known[name]
        lines += [f"## {name}: {example.pattern}", "", f"![{name}]({name}.png)", "",
                  "| run | what it does | expected | measured |", "|---|---|---|---|"]
        for mistake, s in runs.items():
            what = "the pattern" if mistake == "none" else example.mistakes[mistake].description
            expected = "" if mistake == "none" else example.mistakes[mistake].consequence
            lines.append(f"| `{mistake}` | {what} | {expected} | {headline(name, s)} |")
        lines.append("")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../configs", config_name="tour")
def main(cfg) -> None:
    run_cli(tour, cfg)


if __name__ == "__main__":
    main()
