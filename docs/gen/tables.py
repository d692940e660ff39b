"""The gallery's headline numbers, pattern against mistake, read from docs/gates.json
(scripts/gates.py) and docs/bench.json (scripts/bench.py). One place for the README's table
(scripts/figures.py writes it between its markers), the site's home page and the hero figure.
No figure here is typed by hand; the one list kept by hand is `peer_speeds`'s peers (a new peer
benchmark adds its line there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

DOCS = Path(__file__).resolve().parents[1]
START = "<!-- gallery-table:start (scripts/figures.py writes this block) -->"
END = "<!-- gallery-table:end -->"


def load(name: str) -> dict:
    return json.loads((DOCS / name).read_text())


def measurements(gates: dict | None = None, bench: dict | None = None) -> dict:
    """example -> what its measurements say (`EXAMPLE.measured` on its gates.json entry and
    bench.json: the README row, the hero panel, the mistake's cost), for the examples measured."""
    from gallery.core.registry import examples

    gates, bench = gates or load("gates.json"), bench or load("bench.json")
    return {name: example.measured(gates[name], bench)
            for name, example in examples().items() if name in gates}


def headlines(gates: dict | None = None, bench: dict | None = None) -> dict[str, tuple[str, str]]:
    """example -> (what the pattern measured, what its best-known mistake measured), in words and
    JSON numbers; an example not measured yet says how to measure it."""
    from gallery.core.registry import examples

    measured = measurements(gates, bench)
    return {name: measured[name].readme if name in measured else
            (f"not measured yet: `scripts/gates.py {name} --json docs/gates.json`", "")
            for name in examples()}


def gallery_table(link=lambda name: f"gallery/{name}.py") -> str:
    """The README's gallery table: example, the cut, pattern against mistake, a link to the
    example."""
    from gallery.core.registry import examples

    found, numbers = examples(), headlines()
    lines = [START, "| example | the cut | pattern | mistake |", "|---|---|---|---|"]
    for name in found:
        pattern, mistake = numbers[name]
        row = f"| [`{name}`]({link(name)}) | {found[name].pattern} | {pattern} | {mistake} |"
        lines.append(row)
    return "\n".join([*lines, END])


def peer_speeds(bench: dict | None = None) -> list[dict]:
    """The gallery's speed over each peer's, per algorithm, at the peer's own settings, from the
    `cleanrl`, `sb3`, `vqvae`, `maml`, `evaluate` and `trl` benches (whole processes, training
    loops or evaluation passes, side by side)."""
    bench = bench or load("bench.json")
    found = []
    for key, peer, field, settings in (
            ("cleanrl", "CleanRL", "gallery_speed_over_cleanrl", "CleanRL's"),
            ("sb3", "Stable-Baselines3", "gallery_speed_over_sb3", "RL Zoo's"),
            ("vqvae", "vector-quantize-pytorch", "speed_gallery_over_library_learned", "the same"),
            ("maml", "higher", "speed_gallery_over_higher", "the same"),
            ("evaluate", "Lightning (Trainer.validate)", "speed_gallery_over_lightning",
             "the same"),
            ("trl", None, "speed_gallery_over_trl", "the same")):  # None: the row's own peer
        for row in bench.get(key, []):
            if field in row:
                algorithm = key if key in ("vqvae", "maml", "evaluate") else \
                    row.get("label") or row["setting"].split(":")[0]
                if key == "vqvae":
                    algorithm += f" K={row.get('codebook_size', 32)}"
                found.append({"algorithm": algorithm, "peer": peer or row["peer"],
                              "settings": settings,
                              "speed": row[field]})
    return found


def times_to_solve(bench: dict | None = None) -> list[dict]:
    """Seconds and env steps to solve (CartPole-v1 at 475, Pendulum-v1 at -200), the gallery
    against Stable-Baselines3, each at its own settings (the `sb3` bench: medians of seeds)."""
    bench = bench or load("bench.json")
    return [{"algorithm": row["setting"].split(":")[0],
             "env_id": row.get("env_id", "CartPole-v1"),
             "gallery_seconds": row["gallery_seconds_to_solve"],
             "sb3_seconds": row["sb3_seconds_to_solve"],
             "gallery_env_steps": row["gallery_env_steps_to_solve"],
             "sb3_env_steps": row["sb3_env_steps_to_solve"],
             "fraction": row["gallery_time_fraction_of_sb3"],
             "target": row["target_fraction"]}
            for row in bench.get("sb3", []) if "gallery_seconds_to_solve" in row]


def speed_limits(bench: dict | None = None) -> list[dict]:
    """At RL Zoo's settings, in env steps per second against SB3's own learn(): the gallery's
    train() call, and a minimal loop of the same pattern functions with nothing around them (the
    `sb3` bench). The minimal loop is as fast as these settings let the gallery's code go."""
    bench = bench or load("bench.json")
    return [{"algorithm": row["setting"].split(":")[0],
             "train": row["gallery_train_over_sb3_learn"],
             "minimal": row["minimal_loop_over_sb3_learn"],
             "fraction": row["gallery_train_fraction_of_minimal"]}
            for row in bench.get("sb3", []) if "minimal_loop_over_sb3_learn" in row]


def mistake_costs(gates: dict | None = None, bench: dict | None = None) -> list[dict]:
    """What each example's costliest measured mistake costs against its pattern, as ratios
    (mistake over pattern) of time per step and of bytes held for backward."""
    return [{"example": name, "mistake": m.cost.mistake, "time": m.cost.time,
             "bytes": m.cost.bytes, "source": m.cost.source}
            for name, m in measurements(gates, bench).items()]


def hero_panels(gates: dict | None = None, bench: dict | None = None) -> dict:
    """example -> its hero panel (the metric, the pattern's value, the mistake's)."""
    return {name: m.hero for name, m in measurements(gates, bench).items()}


def nav() -> list[dict]:
    """The site's Examples section: one page per example, in the gallery's order."""
    from gallery.core.registry import examples

    return [{name: f"examples/{name}.md"} for name in examples()]


def check_table() -> list[str]:
    """Every mistake in the gallery and the check that catches it, or why none can: the rows of
    the check page, from each mistake's `caught` or `no_check`."""
    from gallery.core.registry import examples

    rows = []
    for name, example in examples().items():
        for key, mistake in example.mistakes.items():
            how = (f"`{mistake.caught.split(':')[0]}`" if mistake.caught
                   else f"no check: {mistake.no_check}")
            rows.append(f"| [{name}](examples/{name}.md) | `{key}` | {how} |")
    return rows


class Situation(NamedTuple):
    """A row of the check page's "which check, for which situation" table: the situation, what the
    module or value is meant to be there, the checks that say so (as a user writes them), and the
    gallery's mistakes it is for ("example:mistake"). tests/test_check_advice.py holds the advice
    to those mistakes: each one's step fails the check the row advises, in the form it advises."""
    situation: str
    intent: str
    checks: str
    mistakes: tuple[str, ...]


SITUATIONS = [
    Situation("a frozen backbone", "frozen here, and not trained by the optimizer",
              '`frozen(backbone=...)` around a step; `optimizer_covers(optimizer, model=...)`; '
              '`runs_in_train_mode(model=..., ignore=["backbone"])`',
              ("finetune:no_freeze", "finetune:bn_train")),
    Situation("a target network", "a copy, not an alias; frozen between syncs; its target is data",
              "`disjoint(online=..., target=...)`; `frozen(target=...)` around an update; "
              "`constant(td_target=...)`",
              ("dqn:target_grad", "dqn:no_target+target_grad", "sac:target_grad")),
    Situation("a teacher or a reference model", "its own copy, frozen, in eval mode, its outputs "
              "data", "`disjoint(policy=..., reference=...)`; `frozen(teacher=...)` around a "
              "student step; `runs_in_eval_mode(teacher=...)`; `constant(ref_logprobs=...)`",
              ("distill:teacher_train_mode", "distill:teacher_with_grad",
               "distill:teacher_in_optimizer", "dpo:reference_is_policy",
               "dpo:reference_with_grad", "dpo:reference_train_mode", "grpo:reference_is_policy",
               "grpo:reference_with_grad", "ema:teacher_requires_grad")),
    Situation("an EMA", "a copy that every update writes, weights and floating-point buffers, no "
              "graph", "`disjoint(...)`; `updated(ema=...)` around the update; "
              "`constant(ema_weights=list(ema.parameters()))`",
              ("ema:skip_buffers", "ema:ema_with_grad")),
    Situation("one loss that must not train another network", "the D step and G, the actor's loss "
              "and the critic, the codebook loss and the encoder",
              "`no_grad_reaches(generator=..., before=opt_d)` around the loop; "
              "`no_grad_reaches(critic=...)` around the loss's backward",
              ("gan:no_detach", "gan:retain_graph", "gan:retain_graph_shared_zero_grad",
               "gan:reuse_d_output", "a2c:advantage_grad", "sac:actor_updates_critic",
               "vqvae:no_sg_codebook")),
    Situation("a regression target, a rollout's stored values", "data: no graph behind them",
              "`constant(returns=..., advantages=..., old_logprobs=...)`",
              ("ppo:rollout_grad", "ppo:advantage_grad", "a2c:critic_through_gae",
               "simsiam:no_stop_grad", "grpo:old_logprobs_with_grad")),
    Situation("a hidden state carried across chunks", "data at each chunk's start; memory flat",
              "`constant(state=...)`; `bounded_memory(lambda: chunk_step(...))`",
              ("tbptt:no_detach", "tbptt:retain_graph")),
    Situation("a logged loss or metric", "a number, not a graph",
              "`constant(metrics=...)`; `bounded_memory(lambda: iteration())`",
              ("evaluate:eval_with_grad",)),
    Situation("an evaluation", "eval mode inside, the model unchanged, every mode back, floats out",
              "`modes_restored(model=...)`, `runs_in_eval_mode(model=...)` and "
              "`unchanged(model=...)` around it; `constant(metrics=...)`",
              ("evaluate:eval_with_grad", "evaluate:no_eval_mode", "evaluate:train_not_restored")),
    Situation("a MAML meta-step", "the inner gradient keeps its graph, and the meta-gradient "
              "reaches the initialisation",
              "`has_graph(inner_grads=grads)` on each inner gradient (not `reaches=`, which a "
              "first-order step passes); `gets_grad(initialisation=model)` around the meta-step",
              ("maml:no_create_graph", "maml:detached_fast_weights",
               "maml:deepcopy_inner_step")),
    Situation("a gradient penalty (R1, WGAN-GP)", "the penalty's gradient keeps its graph",
              "`has_graph(r1_grad=grads)`", ("gan:penalty_no_create_graph",)),
    Situation("an accumulated step", "the full batch's gradient, whatever the micro-batches hold",
              "`same_grad_as(full_batch_step, model=...)` around the micro-batches",
              ("accumulate:mean_of_means",)),
    Situation("any training step", "what must learn gets a grad; nothing turns NaN",
              "`gets_grad(model=...)` around the step; `finite(loss=loss)` on the loss and "
              "`finite(model=...)` around the loop (buffers and grads included)",
              ("a2c:value_item", "vqvae:codebook_on_st", "vqvae:no_straight_through",
               "simsiam:no_predictor", "finetune:checkpoint_reentrant")),
]
