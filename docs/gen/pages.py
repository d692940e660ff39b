"""Build-time pages (mkdocs-gen-files): one page per example, the lessons and the performance
tables, from the gallery's own registry and from docs/gates.json, docs/bench.json and
docs/bench_cuda.json. Code is included from the source by line range (pymdownx.snippets), never
pasted; every figure on these pages is read from a JSON file that a script writes."""

from __future__ import annotations

import inspect
import json
import re
import sys
import textwrap
from pathlib import Path

import mkdocs_gen_files

from gallery import lessons
from gallery.core.registry import examples

sys.path.insert(0, str(Path(__file__).resolve().parent))
import face  # noqa: E402  (docs/gen/face.py: the top of each example page)
import tables  # noqa: E402  (docs/gen/tables.py: the headline numbers, from the JSON files)

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def rows(node, label: str = "", gate: bool = False) -> list[tuple[str, str, str]]:
    """(what, metric, value) rows of a JSON entry: numbers and flags, lists of seeds joined in
    order; of a gate's entry, without its wall times."""
    out: list[tuple[str, str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if gate and face.timed_alongside(key):
                continue
            children = value.values() if isinstance(value, dict) else value
            if isinstance(value, (dict, list)) and any(isinstance(v, (dict, list))
                                                       for v in children):
                out += rows(value, f"{label} {key}".strip(), gate)
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                out += rows(value, f"{label} {key}".strip(), gate)
            elif isinstance(value, list):
                out.append((label or "-", key, ", ".join(fmt(v) for v in value)))
            elif not isinstance(value, dict):
                out.append((label or "-", key, fmt(value)))
    elif isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        for metric in node[0]:
            if gate and face.timed_alongside(metric):
                continue
            if not isinstance(node[0][metric], (dict, list)):
                out.append((f"{label} (seeds in order)".strip(), metric,
                            ", ".join(fmt(v.get(metric)) for v in node)))
    return out


def table(node, gate: bool = False) -> str:
    lines = ["| what | metric | measured |", "|---|---|---|"]
    lines += [f"| {a} | `{b}` | {c} |" for a, b, c in rows(node, gate=gate)]
    return "\n".join(lines)


def cell(values: list) -> str | None:
    """One run's column over its seeds: the mean, with the range beneath when the seeds differ;
    a flag as how many seeds hold it. None for what is not a number or a flag (lists, text)."""
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    if all(isinstance(v, bool) for v in present):
        held = sum(present)
        return "true" if held == len(present) else "false" if not held else \
            f"{held} of {len(present)}"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        low, high = min(present), max(present)
        mean = fmt(sum(present) / len(present))
        return mean if low == high else f"{mean}<br><small>{fmt(low)} to {fmt(high)}</small>"
    return None


def runs_table(entry: dict, keys: tuple[str, ...], width: int = 5) -> list[str]:
    """A gate's runs as tables of one row per run (the pattern, then each mistake) and one column
    per key the gate reads (`width` keys a table, so that a page reads at 900 px without a
    sideways scroll). Empty for a gate whose entry is not runs of seeds."""
    runs = entry.get("runs") if isinstance(entry, dict) else None
    if not isinstance(runs, dict) or not all(isinstance(rows, list) and rows and all(
            isinstance(r, dict) for r in rows) for rows in runs.values()):
        return []
    keys = tuple(keys or runs[next(iter(runs))][0])
    shown = [k for k in keys if not face.timed_alongside(k)
             and all(cell([r.get(k) for r in rows]) is not None for rows in runs.values())
             and any(k in r for rows in runs.values() for r in rows)]
    lines = []
    per = -(-len(shown) // -(-len(shown) // width)) if shown else width  # even tables
    for start in range(0, len(shown), per):
        chunk = shown[start:start + per]
        lines += ["| run | " + " | ".join(k.replace("_", " ") for k in chunk) + " |",
                  "|---|" + "---|" * len(chunk)]
        lines += [f"| {'the pattern' if label == 'none' else f'`{label}`'} | "
                  + " | ".join(cell([r.get(k) for r in rows]) for k in chunk) + " |"
                  for label, rows in runs.items()]
        lines.append("")
    return lines


def criteria_list(gate, entry: dict) -> list[str]:
    """The gate in words, from its criteria: what it runs, then each criterion and whether it holds
    on the rows docs/gates.json keeps."""
    runs = entry.get("runs", {})
    lines = [f"**The gate:** {gate.target}. It passes when:", ""]
    for c in gate.criteria:
        verdict = {True: "holds", False: "**does not hold**", None: "not measured yet"}[
            c.holds_on(runs)]
        timed = " (a bound on wall time: `scripts/gates.py` holds it, the tests do not)" \
            if c.timed else ""
        lines.append(f"- {c.says}: {verdict}{timed}")
    return [*lines, ""]


def bench_table(value) -> str:
    """A bench's entry: each row was measured in a setting of its own (a setting, a command, the
    data), so each row is its own group, named by its first text field, with all its figures; rows
    with other keys than the first keep theirs."""
    if not (isinstance(value, list) and all(isinstance(row, dict) for row in value)):
        return table(value)
    lines = ["| what | metric | measured |", "|---|---|---|"]
    for row in value:
        name = next((k for k, v in row.items() if isinstance(v, str) and k != "skipped"), None)
        label = unnamed_row(row) if name is None else row[name] if name == "setting" else \
            f"{name}: {row[name]}"
        group = rows({k: v for k, v in row.items() if k != name}, label)
        # the row's name once, on its first figure
        lines += [f"| {a if j == 0 else ''} | `{b}` | {c} |" for j, (a, b, c) in enumerate(group)]
    return "\n".join(lines)


def unnamed_row(row: dict) -> str:
    """What a bench row without a setting of its own holds, in words, from its keys."""
    keys = list(row)
    if all(": " in k for k in keys):
        return "the same figures, by mistake"
    if all("_over_" in k for k in keys):
        return "ratios of the rows above"
    return "more figures, in the setting of the rows above"


def snippet(obj) -> str:
    """A pymdownx.snippets include of the object's source lines, from the file that defines it."""
    # a contextmanager's or no_grad's function: its own lines, decorators included
    obj = inspect.unwrap(obj)
    lines, start = inspect.getsourcelines(obj)
    path = Path(inspect.getsourcefile(obj)).resolve().relative_to(ROOT)
    return f'```python\n--8<-- "{path}:{start}:{start + len(lines) - 1}"\n```'


HOME = """# Detach Gallery

Runnable PyTorch training examples, each built around one way of cutting the autograd graph, each
shown next to the mistake people make instead, with measurements and tests that prove both.

![Each pattern next to its mistake, as measured](img/hero.png)

Every page of this site is built from the code and from the JSON files the project's scripts write:
each example's page includes its pattern functions from `gallery/<example>.py` itself, prints each
mistake as the diff `python -m gallery show <example>` prints, and renders its measured results from
`docs/gates.json` (`scripts/gates.py`); the performance page renders `docs/bench.json` and
`docs/bench_cuda.json` (`scripts/bench.py`).

## The gallery

"""
with mkdocs_gen_files.open("index.md", "w") as out:
    out.write(HOME + tables.gallery_table(link=lambda name: f"examples/{name}.md") + """

## Start

From a clone of the repository (Python 3.10 or newer; each script makes `.venv` and installs the
project into it the first time):

```bash
scripts/run.sh     # the quick tour: every pattern next to its mistakes, with a report
scripts/test.sh    # the fast tests
```

Or into an environment of your own, then run any example from the command line:

```bash
pip install -e .                 # torch>=2.4; '.[dev]' adds the test tools
python -m gallery list           # the examples and their mistakes
python -m gallery.gan seed=0     # one example, Hydra-configured
```
""")

gates = json.loads((DOCS / "gates.json").read_text())
measured_by_example = tables.measurements()
for name, example in examples().items():
    module = example.module
    lead, words, run = face.docstring_parts(module.__doc__ or "", example.mistakes)
    measured = measured_by_example.get(name)
    figures = face.mistake_figures(example, gates.get(name, {}), measured)
    page = [f"# {name}", "", *lead, "", *face.mistakes_list(example, words, figures, measured),
            *face.run_block(run), "## The pattern", ""]
    for function in example.pattern_functions:
        page += [f"### `{function}`", "", snippet(getattr(module, function)), ""]
    page += ["## The mistakes", "", "Each as the diff that fixes it: the mistake's lines in red, "
             "the pattern's in green.", ""]
    shown_variants: set[str] = set()
    for key, mistake in example.mistakes.items():
        numbers = "; ".join(figures.get(key) or [])
        page += [f"### `mistake={key}`", "", f"{mistake.description}.", "",
                 f"**What it costs:** {mistake.consequence}"
                 + (f". **Measured:** {numbers}." if numbers else "."), ""]
        for variant in mistake.variants:  # its own diffs; a variant shown above is named once
            if variant not in shown_variants:
                page += ["```diff", *example.diff(variant), "```", ""]
        again = [f"`{v}`" for v in mistake.variants if v in shown_variants]
        if again:
            page += [f"With {', '.join(again)}, shown above.", ""]
        shown_variants.update(mistake.variants)
    page += ["## Measured", ""]
    figures = sorted(p.name for p in (DOCS / "img").glob(f"{name}*.png"))
    page += [f"![{figure}](../img/{figure})" for figure in figures] + [""]
    if name in gates:
        keys = example.gate.keys if example.gate else ()
        by_run = runs_table(gates[name], keys)
        page += [f"From `docs/gates.json`, written by `scripts/gates.py {name}` (fixed seeds, on "
                 "the machine named in `docs/bench.json`)"
                 + (": each run's mean over its seeds, the range beneath." if by_run else ".")
                 + " No table shows wall times: they were taken with other runs alongside, and "
                 "the JSON keeps them for the gates' bounds on time.",
                 "", *by_run, *criteria_list(example.gate, gates[name])]
        page += ['??? note "Every run, seed by seed"' if by_run else "", "",
                 *(("    " if by_run else "") + line
                   for line in table(gates[name], gate=True).splitlines()),
                 ""]
    else:
        page += [f"No gate entry yet: `scripts/gates.py {name} --json docs/gates.json` writes one.",
                 ""]
    for key, more in example.more_gates.items():  # e.g. gan_sizes
        entry = gates.get(f"{name}_{key}", {})
        page += [f"### `scripts/gates.py {name}_{key}`", "",
                 *(runs_table(entry, more.keys) or [table(entry, gate=True)]), "",
                 *criteria_list(more, entry)]
    if example.limits:
        page += ["## Limits of the default config", "", example.limits, ""]
    functions = ", ".join(f"`{f}`" for f in example.pattern_functions)
    page += ["## What to copy", "", f"{functions} above; `python -m gallery show {name}` prints "
             "them with every mistake as a diff.", ""]
    with mkdocs_gen_files.open(f"examples/{name}.md", "w") as out:
        out.write("\n".join(page))

with mkdocs_gen_files.open("lessons.md", "w") as out:
    out.write("# Lessons\n\n`python -m gallery lessons` runs each claim as code that asserts "
              "it.\n\n| lesson | the claim | status |\n|---|---|---|\n")
    for key, lesson in lessons.LESSONS.items():
        out.write(f"| `{key}` | {lessons.claim(lesson)} | {lessons.status(key)} |\n")

BENCH_TITLES = {  # each bench of scripts/bench.py, in words
    "gan": "GAN: the D step on fake.detach() against retain_graph",
    "dqn": "DQN: the gallery's loop against a minimal one, and target_grad's bytes",
    "finetune": "Fine-tuning: a frozen backbone against no_freeze; gradient checkpointing",
    "tbptt": "TBPTT: truncated against untruncated",
    "threads": "Threads: threads=auto against torch's default, alone and two runs at once",
    "smoke": "The smoke test's wall time",
    "ppo": "PPO: where a run's time goes, and each mistake's bytes",
    "sac": "SAC: where a run's time goes, and each mistake's bytes",
    "compile": "torch.compile: when its warm-up pays",
    "dqn_envs": "DQN: vector envs, sync against async",
    "startup": "Start-up: a command's answer against importing torch alone",
    "cleanrl": "Against CleanRL at its settings",
    "cuda_graphs": "CUDA graphs",
    "vqvae": "VQ-VAE against vector-quantize-pytorch",
    "chain": "Hookless RL nets against nn.Sequential",
    "sb3": "Against Stable-Baselines3: RL Zoo's settings, and time to solve",
    "check": "What each gallery.check costs",
    "maml": "MAML against higher",
    "evaluate": "Evaluation: no_grad against inference_mode and no no_grad; against Lightning",
    "check_peers": "gallery.check beside torcheck, tinytorchtest and pytest-torch",
    "tour": "The quick tour (scripts/run.sh): its time, and each example's share",
    "trl": "grpo and dpo against TRL's GRPOTrainer and DPOTrainer",
}


THRESHOLDS = {"CartPole-v1": "475 over 10 episodes", "Pendulum-v1": "-200 over 10 episodes"}


def performance_page() -> str:
    speeds, solves, costs = tables.peer_speeds(), tables.times_to_solve(), tables.mistake_costs()
    limits = tables.speed_limits()
    page = ["# Performance", "",
            "Every figure here is read from `docs/bench.json` (this page's first part, on the CPU "
            "named below) or `docs/bench_cuda.json`, which `scripts/bench.py` writes: ratios of "
            "two things measured side by side in one run, never a time typed by hand.", "",
            "## Against the peers", "", "![The gallery against its peers](img/peers.png)", "",
            "| algorithm | peer | settings | the gallery's speed over the peer's |",
            "|---|---|---|---|"]
    page += [f"| {s['algorithm']} | {s['peer']} | {s['settings']} | {s['speed']:.2f}x |"
             for s in speeds]
    page += ["", "The Stable-Baselines3 rows time whole processes, from start to exit (imports, "
             "environments and the training loop), and give the median of three pairs run in "
             "turn; the loop-only table further down times the training loop alone, so its ratios "
             "differ from these."]
    if solves:
        missed = [s["algorithm"] for s in solves if s["fraction"] > s["target"]]
        page += ["", "Time to solve, each side at its own settings (the gallery's defaults; RL "
                 "Zoo's), from process start to exit, median of seeds. The goal is the gallery in "
                 "at most the share of SB3's time the last column names; "
                 + (f"{' and '.join(missed)} {'misses' if len(missed) == 1 else 'miss'} it."
                    if missed else "every algorithm meets it."), "",
                 "| algorithm | env (solved at) | the gallery: seconds | env steps | "
                 "Stable-Baselines3: seconds | env steps | the gallery's share of SB3's time "
                 "(goal) |", "|---|---|---|---|---|---|---|"]
        page += [f"| {s['algorithm']} | {s['env_id']} ({THRESHOLDS.get(s['env_id'], '?')}) | "
                 f"{s['gallery_seconds']:.1f} | {fmt(s['gallery_env_steps'])} | "
                 f"{s['sb3_seconds']:.1f} | {fmt(s['sb3_env_steps'])} | {s['fraction']:.2f} "
                 f"(at most {s['target']:.2f}: "
                 f"{'met' if s['fraction'] <= s['target'] else '**missed**'}) |"
                 for s in solves]
    if limits:
        page += ["", "The training loop alone, at RL Zoo's settings: env steps per second inside "
                 "the gallery's `train()` over those inside SB3's own `learn()` (start-up left "
                 "out, unlike the whole-process ratios above), and for a minimal loop of the same "
                 "pattern functions with nothing around them (env step, forward, update). Where "
                 "the minimal loop is under 2x, the update's own arithmetic (the matmuls and "
                 "their backward, which SB3 runs too) sets the limit, not the gallery's loop.", "",
                 "| algorithm | train() over SB3 | minimal loop over SB3 | train() as a share of "
                 "the minimal loop |", "|---|---|---|---|"]
        page += [f"| {x['algorithm']} | {x['train']:.2f}x | {x['minimal']:.2f}x | "
                 f"{x['fraction']:.2f} |" for x in limits]
    page += ["", "## What each mistake costs", "",
             "![What each mistake costs](img/mistake_costs.png)", "",
             "Each example's own `EXAMPLE.measured(...).cost`: its costliest mistake over its "
             "pattern. "
             "Where the time comes from a gate, it is the mistake's runs against the pattern's, "
             "one after another in one `scripts/gates.py` run, on the same steps.", "",
             "| example | mistake | time per step | bytes held for backward | measured by |",
             "|---|---|---|---|---|"]
    page += [f"| {c['example']} | `{c['mistake']}` | "
             f"{'' if c['time'] is None else face.ratio(c['time'])} | "
             f"{'' if c['bytes'] is None else face.ratio(c['bytes'])} | {c['source']} |"
             for c in costs]
    page += ["", "## Every figure", "",
             "Each bench's rows as `scripts/bench.py <bench>` wrote them, under its name.", ""]
    for source in ("bench.json", "bench_cuda.json"):
        path = DOCS / source
        if not path.is_file():
            continue
        bench = json.loads(path.read_text())
        machine, torch_version = bench.get("machine", "?"), bench.get("torch", "?")
        page += [f"## `docs/{source}`: {machine}, torch {torch_version}", ""]
        for key, value in bench.items():
            if key in ("machine", "torch"):
                continue
            body = "\n".join("    " + line for line in bench_table(value).splitlines())
            page += [f"### {BENCH_TITLES.get(key, key)} {{#{key}}}", "",
                     f'??? note "`scripts/bench.py {key}`: the figures"', "", body, ""]
    return "\n".join(page) + "\n"


with mkdocs_gen_files.open("performance.md", "w") as out:
    out.write(performance_page())


def load_test_module(name: str):
    """tests/<name>.py, by its path: the check page shows what those tests run."""
    import importlib.util

    if str(ROOT) not in sys.path:  # the tests import each other as the `tests` package
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(f"_docs_{name}", ROOT / "tests" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def failure(run) -> str:
    """The message a mistake's check fails with, wrapped to the page's width."""
    try:
        run()
    except AssertionError as err:
        return "\n".join(textwrap.fill(line, 96, break_on_hyphens=False)
                         for line in str(err).splitlines())
    raise RuntimeError(f"{run.__name__} should fail its check")  # the build stops: the page lies


def short_signature(function) -> str:
    """The signature as the source writes it (`nn.Module`, `Collection[str]`), not with every type
    spelled out by its module."""
    return re.sub(r"(: |-> )'([^']*)'", r"\1\2", str(inspect.signature(function)))


def listed(doc: str) -> list[str]:
    """A docstring's lines, with a blank line before each list that follows a sentence, so that
    Markdown renders it as a list; a bullet's continuation lines are indented under it."""
    lines: list[str] = []
    for line in doc.splitlines():
        if line.startswith("- ") and lines and lines[-1].strip() and not lines[-1].startswith(
                ("- ", "  ")):
            lines.append("")
        lines.append(line)
    return lines


CHECK_INTRO = """# Check your own training step

You copied a pattern, then changed it: another loss, another model, a refactor. `gallery.check`
tells your own tests whether the graph is still cut where the pattern cuts it (and, with
`has_graph`, still whole where it must not be cut). It needs torch and nothing else; each check
raises `AssertionError` with one sentence naming what reached what, and ends by pointing at its
own docstring (`help(gallery.check.<check>)`, the text under each check below). A check handed
nothing it could judge raises `ValueError` instead of passing.

```python
from gallery.check import (bounded_memory, constant, disjoint, finite, frozen, gets_grad,
                           has_graph, modes_restored, no_grad_reaches, optimizer_covers,
                           runs_in_eval_mode, runs_in_train_mode, same_grad_as, unchanged,
                           updated)
```

In pytest, the same module is also the `gallery_check` fixture (the plugin loads by pytest's entry
point wherever detach-gallery is installed). The examples below are `tests/test_check_docs.py`,
run by the gallery's own tests; each message under them is what the mistake printed when this page
was built. The checks are also tested on real libraries' classes (timm's `ModelEmaV2` and
`ModelEmaV3`, vector-quantize-pytorch's `VectorQuantize`) and on steps shaped like
pytorch/examples' dcgan and word_language_model, CleanRL's dqn and ppo and the SimSiam reference:
`tests/test_check_real.py`.
"""

CHECKS = ("no_grad_reaches", "gets_grad", "unchanged", "updated", "constant", "has_graph",
          "disjoint", "bounded_memory", "modes_restored", "runs_in_eval_mode", "runs_in_train_mode",
          "finite", "optimizer_covers", "frozen", "same_grad_as")


# The checks measured around one training step (scripts/measure/check.py), in the page's order.
# same_grad_as runs a whole reference step by design, so the 5% goal leaves it out.
STEP_CHECKS = ("no_grad_reaches", "gets_grad", "constant", "has_graph", "modes_restored",
               "runs_in_train_mode", "finite", "optimizer_covers", "frozen", "same_grad_as",
               "runs_in_eval_mode")
PER_MILLION = ("unchanged", "updated", "disjoint")  # in ms per million watched values


def check_costs(bench: dict) -> list[str]:
    """What each check costs, from docs/bench.json (`scripts/bench.py check`)."""
    rows = {row["setting"]: row for row in bench.get("check", [])}
    steps = [row for name, row in rows.items() if "step_ms" in row]
    if not steps:
        raise RuntimeError("docs/bench.json has no check rows: run scripts/bench.py check")
    head = ["| check | " + " | ".join(row["setting"].removeprefix("check: ") for row in steps)
            + " |", "|---|" + "---|" * len(steps)]
    def cost(row: dict, name: str) -> str:
        if row[name + "_added_us"] <= 0:  # the blocks' spread is larger than the check
            return f"within the noise ({row[name + '_step_ratio']:.2f}x the step)"
        return f"{row[name + '_step_ratio']:.2f}x the step (+{row[name + '_added_us']:,.0f} µs)"

    around_a_step = [name for name in STEP_CHECKS if name + "_step_ratio" in steps[0]]
    body = [f"| `{name}` | " + " | ".join(cost(row, name) for row in steps) + " |"
            for name in around_a_step]
    body += [f"| `{name}` | " + " | ".join(f"{row[name + '_ms_per_million']:.2f} ms per million "
                                           f"parameters and buffers" for row in steps) + " |"
             for name in PER_MILLION if name + "_ms_per_million" in steps[0]]
    costed = {key.removesuffix(end) for key in steps[0]
              for end in ("_step_ratio", "_ms_per_million") if key.endswith(end)}
    missing = [name for name in CHECKS if name != "bounded_memory" and name not in costed]
    if missing:  # the build stops: a check without its cost would be left off the table
        raise RuntimeError(f"docs/bench.json has no cost for {missing}: run scripts/bench.py "
                           "check --json docs/bench.json")
    largest = max(steps, key=lambda row: row["step_ms"])
    over = [name for name in around_a_step
            if name != "same_grad_as" and largest[name + "_step_ratio"] > 1.05]
    graph_verdict = f"missed by {', '.join(over)}" if over else "met by every graph check"
    slow = sorted({name for row in steps for name in ("unchanged", "updated")
                   if row[name + "_ms_per_million"] > 1.0})
    copy_verdict = (f"not met by {' and '.join(f'`{n}`' for n in slow)}" if slow
                    else "met by both")
    lstm = next(row for row in rows.values() if "bounded_memory_ratio_lstm_chunk" in row)
    leak = next(row for row in bench["check"] if "leak_resident_bytes_per_iteration" in row)
    return [
        "## What each check costs", "",
        f"Measured by `scripts/bench.py check` on {bench['machine']} (torch {bench['torch']}): "
        "each graph check around one whole training step (forward, backward, SGD step) against "
        "the same step without it, in alternating blocks (`runs_in_eval_mode` around an "
        "evaluation: eval mode and a forward under no_grad); `unchanged`, `updated` and "
        "`disjoint` per million watched values.", "", *head, *body, "",
        f"- The goal is at most 5% on the largest step "
        f"({largest['setting'].removeprefix('check: ')}): {graph_verdict}. On a step of half a "
        f"millisecond the fixed cost of a block (hooks registered and removed once) shows as a "
        f"ratio. `same_grad_as` runs a whole reference step by design, and is left out of the "
        f"goal.",
        f"- `unchanged` and `updated` copy every watched tensor before the block and compare after "
        f"it, bit for bit: no hashing. The goal is at most 1 ms per million: {copy_verdict}. The "
        f"copy lands in fresh memory, and on this CPU the page faults of that fresh memory are "
        f"most of the cost (a digest would read the memory once, but could miss a change, and a "
        f"check that can miss is worse than a slow one).",
        f"- `bounded_memory`: {lstm['bounded_memory_ratio_lstm_chunk']:.1f}x five plain calls of "
        f"{lstm['setting'].removeprefix('check: bounded_memory, ')}: the saved-tensor hooks, and "
        f"twice a scan of every live Python object for tensors with a graph. A test-time check.",
        "", "## The leak no example owns: logging the loss itself", "",
        f"`running_loss += loss` (or `losses.append(loss)`) in a loop that runs `backward()` every "
        f"iteration. Backward frees the saved tensors, so no byte stays held for it, yet each kept "
        f"loss keeps its chain of autograd nodes: {leak['leak_graph_nodes_per_iteration']:g} nodes "
        f"and {leak['leak_resident_bytes_per_iteration']:,} bytes of resident memory per "
        f"iteration, against {leak['fixed_resident_bytes_per_iteration']:,} bytes with "
        f"`loss.item()` ({leak['setting'].removeprefix('any loop: ')}). `bounded_memory` counts "
        f"those nodes and fails; the example above is that loop.", ""]


def check_peers(bench: dict) -> list[str]:
    """gallery.check beside torcheck, tinytorchtest and pytest-torch on the same step pairs, from
    docs/bench.json (`scripts/bench.py check_peers`)."""
    rows = bench.get("check_peers")
    if not rows or "pairs" not in rows[0]:
        raise RuntimeError("docs/bench.json has no check_peers rows: run scripts/bench.py "
                           "check_peers")
    summary, pairs = rows[0], rows[1:]
    tools = [key.removesuffix("_expresses") for key in summary if key.endswith("_expresses")]
    page = ["## Beside the other check libraries", "",
            f"`scripts/bench.py check_peers` ({bench['machine']}): {len(pairs)} small steps, each "
            "written correctly and with one mistake, judged by each library through its own "
            "natural API (installed with `pip --target --no-deps`, never a dependency). *right*: "
            "it passes the correct step and fails the mistake; *false alarm*: it fails the correct "
            "step; *miss*: it passes the mistake; *cannot express*: it has no way to state the "
            "property.", "",
            "| step pair | " + " | ".join(tools) + " |", "|---|" + "---|" * len(tools)]
    page += [f"| {row['pair']} | " + " | ".join(row[tool] for tool in tools) + " |"
             for row in pairs]
    page += ["| **right, of those it can express** | " + " | ".join(
        f"**{summary[tool + '_right']} of {summary[tool + '_expresses']}**" for tool in tools)
        + " |",
        "| time of its check over the plain step | " + " | ".join(
            f"{summary[tool + '_step_ratio']:.2f}x" for tool in tools) + " |", ""]
    ours = tools[0]
    wins = [f"{tool} on *{row['pair']}*" for row in pairs for tool in tools[1:]
            if row[tool] == "right" and row[ours] != "right"]
    page.append(("Where a peer is right and gallery.check is not: " + "; ".join(wins) + ".")
                if wins else "No peer is right on a pair where gallery.check is not.")
    page += ["", "The time row is one pair every library judges (a layer detached in the forward): "
             "building the step and judging it, over building it and running it plain, in "
             "alternating blocks. The libraries that run a training step of their own "
             "(tinytorchtest, pytest-torch's `assert_frozen`) judge that step, not yours: they "
             "cannot see a mistake that lives in your loop (a BatchNorm kept in eval by your "
             "step, a stale grad your `zero_grad` left)."]
    return page


def check_page() -> str:
    from gallery import check

    docs = load_test_module("test_check_docs")
    table = load_test_module("test_check")
    page = [CHECK_INTRO, "## Which check, for which situation", "",
            "Think in intents: what is this module or value meant to be here?", "",
            "| situation | the intent | the checks |", "|---|---|---|",
            *(f"| {row.situation} | {row.intent} | {row.checks} |" for row in tables.SITUATIONS),
            "", "## The checks", ""]
    for name in CHECKS:
        page += [f"### {name}", "", f"`{name}{short_signature(getattr(check, name))}`", "",
                 *listed(inspect.getdoc(getattr(check, name))), ""]
    titles = {"gan": "A GAN step: G gets no grad from the D step",
              "dqn": "A DQN update: the TD target is a constant, the target network stays put",
              "tbptt": "A TBPTT loop: memory stays flat chunk after chunk",
              "loop": "A training loop: the loss log keeps no graph",
              "maml": "A MAML inner step: the inner gradient keeps its graph",
              "alias": "A target network: a copy, not the online network under a new name",
              "evaluation": "An evaluation: eval mode inside, nothing changed, every mode back"}
    page += ["## Examples", ""]
    for key, title in titles.items():
        page += [f"### {title}", "", "```python", f'--8<-- "tests/test_check_docs.py:{key}"', "```",
                 "", "The mistake's message:", "", "```text", failure(docs.FAILING[key]), "```", ""]
    page += ["## Every mistake in the gallery, and the check that catches it", "",
             "From each mistake's entry in its example's `EXAMPLE` (`caught`, or `no_check` and "
             "why); `tests/test_check.py` runs each mistake's own step under its check (and the "
             "pattern's step under all of them), and the sentence it fails with is the one "
             "`caught` names.", "", "| example | mistake | caught by |", "|---|---|---|",
             *tables.check_table()]
    for mistake, sentence in sorted(table.LOOP_MISTAKES.items()):
        page.append(f"| any loop | `{mistake}` | `{sentence.split(':')[0]}` |")
    bench = json.loads((ROOT / "docs" / "bench.json").read_text())
    page += ["", *check_costs(bench), "", *check_peers(bench)]
    return "\n".join(page) + "\n"


with mkdocs_gen_files.open("check.md", "w") as out:
    out.write(check_page())
