"""The gallery's headline numbers, pattern against mistake, read from docs/gates.json
(scripts/gates.py) and docs/bench.json (scripts/bench.py). One place for the README's table
(scripts/figures.py writes it between its markers), the site's home page and the hero figure.
No figure here is typed by hand; the one list kept by hand is `peer_speeds`'s peers (a new peer
benchmark adds its line there)."""

from __future__ import annotations

import json
from pathlib import Path

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
                    row["setting"].split(":")[0]
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
