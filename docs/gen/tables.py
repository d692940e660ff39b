"""The gallery's headline numbers, pattern against mistake, read from docs/gates.json
(scripts/gates.py) and docs/bench.json (scripts/bench.py). One place for the README's table
(scripts/figures.py writes it between its markers), the site's home page and the hero figure;
nothing here is typed by hand."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

DOCS = Path(__file__).resolve().parents[1]
START = "<!-- gallery-table:start (scripts/figures.py writes this block) -->"
END = "<!-- gallery-table:end -->"


def load(name: str) -> dict:
    return json.loads((DOCS / name).read_text())


def _span(values: list[float], fmt: str = "{:,.0f}") -> str:
    low, high = min(values), max(values)
    return fmt.format(low) if low == high else f"{fmt.format(low)}-{fmt.format(high)}"


def _bench(bench: dict, name: str, key: str, value: str):
    return next(row for row in bench[name] if row.get(key) == value)


def avg(rows: list[dict], key: str) -> float:
    return mean(r[key] for r in rows)


def headlines(gates: dict | None = None, bench: dict | None = None) -> dict[str, tuple[str, str]]:
    """example -> (what the pattern measured, what its best-known mistake measured), in words and
    JSON numbers."""
    gates, bench = gates or load("gates.json"), bench or load("bench.json")
    gan, ss, vq = gates["gan"], gates["simsiam"]["runs"], gates["vqvae"]["runs"]
    ppo, sac = gates["ppo"]["runs"], gates["sac"]["runs"]
    a2c, ema = gates["a2c"]["runs"], gates["ema"]["runs"]
    a2c_solved = [r["first_solved_step"] for r in a2c["none solve"]]
    ema_slow = (avg(ema["none 300 steps"], "steps_per_sec")
                / avg(ema["ema_with_grad"], "steps_per_sec"))
    solved = [r["first_solved_step"] for r in gates["dqn"]["runs"]]
    ppo_solved = [r["first_solved_step"] for r in ppo["none"] if r["first_solved_step"] is not None]
    digits = _bench(bench, "finetune", "setup", "digits_cnn 8px, batch 64")
    tbptt = bench["tbptt"][0]
    sac_bytes = next(row for row in bench["sac"] if "target_grad_over_pattern" in row)
    return {
        "gan": (f"ring8: {gan['ring8']['mean_modes']:g}/8 modes, "
                f"{gan['ring8']['mean_high_quality']:.0%} high quality",
                f"shared zero_grad: {gan['ring8 mistake']['mean_modes']:g}/8 modes, "
                f"{gan['ring8 mistake']['mean_high_quality']:.0%} high quality"),
        "dqn": (f"CartPole solved by {_span(solved)} env steps, {len(solved)} seeds",
                "target_grad: the target gets .grad (a test asserts it)"),
        "ppo": (f"CartPole solved by {_span(ppo_solved)} env steps, value bias "
                f"{avg(ppo['none time_limit=100'], 'value_bias'):+.1f}",
                f"truncation_as_terminal: value bias "
                f"{avg(ppo['truncation_as_terminal time_limit=100'], 'value_bias'):+.1f}"),
        "sac": (f"Pendulum eval return {avg(sac['none'], 'eval_return_mean'):.0f} "
                f"(mean of seeds)",
                f"alpha_no_detach: {avg(sac['alpha_no_detach'], 'eval_return_mean'):.0f}; "
                f"target_grad: {sac_bytes['target_grad_over_pattern']:.2f}x the bytes per update"),
        "finetune": (f"val acc {_span([r['val_acc'] for r in gates['finetune']['runs']], '{:.3f}')}"
                     ", backbone hash unchanged",
                     f"no_freeze: {1 / digits['time_ratio_frozen_over_full']:.1f}x the time, "
                     f"{1 / digits['bytes_ratio_frozen_over_full']:.0f}x the bytes saved for "
                     f"backward"),
        "tbptt": (f"val {gates['tbptt']['default']['val_bpc']:.2f} bits/char, bytes per chunk flat",
                  f"untruncated: {tbptt['memory_ratio_untruncated_over_truncated']:.1f}x the "
                  f"memory, {tbptt['time_ratio_untruncated_over_truncated']:.2f}x the time"),
        "simsiam": (f"output std {avg(ss['none'], 'output_std_sqrt_d'):.2f}/sqrt(d), "
                    f"kNN {avg(ss['none'], 'knn_acc'):.3f}",
                    f"no_stop_grad: std {avg(ss['no_stop_grad'], 'output_std_sqrt_d'):.2f}"
                    "/sqrt(d), "
                    f"kNN {avg(ss['no_stop_grad'], 'knn_acc'):.3f}: collapsed"),
        "vqvae": (f"held-out MSE {avg(vq['none'], 'recon_mse'):.3f}, perplexity "
                  f"{avg(vq['none'], 'perplexity'):.0f} of 32",
                  f"no_straight_through: MSE {avg(vq['no_straight_through'], 'recon_mse'):.3f}, "
                  f"perplexity {avg(vq['no_straight_through'], 'perplexity'):.0f}; "
                  f"codebook_on_st: codebook never moves"),
        "a2c": (f"CartPole solved by {_span(a2c_solved)} env steps, {len(a2c_solved)} seeds",
                f"value_item: the critic ends bit for bit as it began; return at 100k "
                f"{avg(a2c['value_item 100k'], 'eval_return_mean'):.0f} vs "
                f"{avg(a2c['none 100k'], 'eval_return_mean'):.0f}"),
        "ema": (f"EMA accuracy {avg(ema['none'], 'ema_accuracy'):.1%} (student "
                f"{avg(ema['none'], 'student_accuracy'):.1%}), 10 labels per class",
                f"skip_buffers: EMA accuracy {avg(ema['skip_buffers'], 'ema_accuracy'):.1%}; "
                f"ema_with_grad: {ema_slow:.0f}x slower by step 300"),
    }


ORDER = ("gan", "dqn", "ppo", "sac", "finetune", "tbptt", "simsiam", "vqvae", "a2c", "ema")


def gallery_table(link=lambda name: f"gallery/{name}.py") -> str:
    """The README's gallery table: example, the cut, pattern against mistake, a link to the
    example."""
    from gallery.core.registry import examples

    found, numbers = examples(), headlines()
    lines = [START, "| example | the cut | pattern | mistake |", "|---|---|---|---|"]
    for name in ORDER:
        pattern, mistake = numbers[name]
        row = f"| [`{name}`]({link(name)}) | {found[name].pattern} | {pattern} | {mistake} |"
        lines.append(row)
    return "\n".join([*lines, END])


def peer_speeds(bench: dict | None = None) -> list[dict]:
    """The gallery's speed over each peer's, per algorithm, at the peer's own settings, from the
    `cleanrl`, `sb3` and `vqvae` benches (whole processes or training loops, side by side)."""
    bench = bench or load("bench.json")
    found = []
    for key, peer, field, settings in (
            ("cleanrl", "CleanRL", "gallery_speed_over_cleanrl", "CleanRL's"),
            ("sb3", "Stable-Baselines3", "gallery_speed_over_sb3", "RL Zoo's"),
            ("vqvae", "vector-quantize-pytorch", "speed_gallery_over_library_learned", "the same")):
        for row in bench.get(key, []):
            if field in row:
                algorithm = "vqvae" if key == "vqvae" else row["setting"].split(":")[0]
                found.append({"algorithm": algorithm, "peer": peer, "settings": settings,
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


def mistake_costs(bench: dict | None = None) -> list[dict]:
    """What each example's costliest measured mistake costs against its pattern, as ratios
    (mistake over pattern) of time per step and of bytes held for backward, from bench.json."""
    bench = bench or load("bench.json")
    costs = []

    def add(example: str, mistake: str, time: float | None, memory: float | None) -> None:
        costs.append({"example": example, "mistake": mistake, "time": time, "bytes": memory})

    gan = next((r for r in bench.get("gan", []) if r.get("data") == "digits"), None)
    if gan:
        add("gan", "retain_graph", gan["time_ratio_retain_graph_over_pattern"],
            gan["retain_graph_d_step_saved_bytes"] / gan["pattern_d_step_saved_bytes"])
    dqn = next((r for r in bench.get("dqn", []) if "bytes_ratio_target_grad_over_pattern" in r),
               None)
    if dqn:
        add("dqn", "target_grad", None, dqn["bytes_ratio_target_grad_over_pattern"])
    ppo = next((r for r in bench.get("ppo", []) if "none: saved_bytes_per_update" in r), None)
    if ppo:
        add("ppo", "advantage_grad", None, ppo["advantage_grad: saved_bytes_per_update"]
            / ppo["none: saved_bytes_per_update"])
    sac = next((r for r in bench.get("sac", []) if "target_grad_over_pattern" in r), None)
    if sac:
        add("sac", "target_grad", None, sac["target_grad_over_pattern"])
    tune = next((r for r in bench.get("finetune", []) if "time_ratio_frozen_over_full" in r),
                None)
    if tune:
        add("finetune", "no_freeze", 1 / tune["time_ratio_frozen_over_full"],
            1 / tune["bytes_ratio_frozen_over_full"])
    tbptt = next(iter(bench.get("tbptt", [])), None)
    if tbptt:
        add("tbptt", "untruncated", tbptt["time_ratio_untruncated_over_truncated"],
            tbptt["memory_ratio_untruncated_over_truncated"])
    return costs
