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
