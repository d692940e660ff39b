"""Each example's `EXAMPLE` is the one place the README, the site, the gates, the hero figure, the
check table, the action and the tests read it from. These tests name the example and the field
when something they need is missing, so an omission is never silent."""

from __future__ import annotations

import json

import pytest

from gallery.core.registry import Cost, Example, Panel, examples
from scripts.measure.gate import gates
from tests.conftest import ROOT

EXAMPLES = examples()
DECLARED = gates(EXAMPLES)  # every gate, by its name in docs/gates.json
GATES = json.loads((ROOT / "docs" / "gates.json").read_text())
BENCH = json.loads((ROOT / "docs" / "bench.json").read_text())


def missing_fields(example: Example) -> list[str]:
    """What the README, the site, the tour, the smoke run and the gates need of an example, and
    it lacks, by field name."""
    needs = {
        "pattern_functions": "what a reader copies (the site's page, `show`)",
        "mistakes": "at least one mistake, shown next to the pattern",
        "smoke": "the overrides of a seconds-long run (`python -m gallery smoke`, the action)",
        "check": "the probe on a smoke run's summary",
        "headline": "the tour's one-line result",
        "figure": "the tour's comparison figure",
        "gate": "its learning gate (scripts/gates.py)",
        "measured": "what its measurements say: the README's row, its hero panel, its mistake's "
                    "cost",
    }
    lacking = [f"{field}: {why}" for field, why in needs.items() if not getattr(example, field)]
    lacking += [f"budgets[{b!r}]: the tour's {b} budget" for b in ("full", "quick")
                if b not in example.budgets]
    return lacking


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_example_declares_everything_the_gallery_reads_from_it(name):
    lacking = missing_fields(EXAMPLES[name])
    assert not lacking, f"{name}'s EXAMPLE lacks " + "; ".join(lacking)


@pytest.mark.parametrize("name", EXAMPLES)
def test_its_gate_is_measured_and_the_readme_hero_and_costs_read_it(name):
    example = EXAMPLES[name]
    assert name in GATES, (f"{name}: docs/gates.json has no entry; run scripts/gates.py {name} "
                           "--json docs/gates.json")
    gate, entry = example.gate, GATES[name]
    if not gate.measure:  # a measure adds groups of its own
        assert set(entry["runs"]) == set(gate.runs), (
            f"{name}: docs/gates.json's groups {sorted(entry['runs'])} are not the gate's "
            f"{sorted(gate.runs)}; run scripts/gates.py {name} --json docs/gates.json")
    assert all(r.mistake in {"none", *example.mistakes} for r in gate.runs.values()), name
    assert set(gate.figure_runs) <= set(gate.runs), f"{name}: figure_runs names no group"


    try:
        measured = example.measured(entry, BENCH)
    except KeyError as key:
        pytest.fail(f"{name}: measured() reads {key}, which docs/gates.json's entry or "
                    "docs/bench.json lacks", pytrace=False)
    pattern, mistake = measured.readme
    assert pattern and mistake, f"{name}: measured() gave an empty README cell"
    assert isinstance(measured.hero, Panel), f"{name}: measured().hero is not a Panel"
    cost = measured.cost
    assert isinstance(cost, Cost) and cost.mistake in example.mistakes, (
        f"{name}: measured().cost names no mistake of the example")
    assert cost.time is not None or cost.bytes is not None, f"{name}: a cost with no figure"


@pytest.mark.parametrize("name", DECLARED)
def test_each_gates_criteria_are_its_verdict_in_gates_json(name):
    """The verdict, the gate's text and the seed-0 test all read one list of criteria; here the
    verdict docs/gates.json keeps is what those criteria say of the rows it keeps, so neither can
    change without the other."""
    gate = DECLARED[name][1]
    assert name in GATES, f"{name}: not in docs/gates.json; run scripts/gates.py {name} --json ..."
    entry = GATES[name]
    assert gate.criteria, f"{name}: a gate with no criterion passes anything"
    read = {g for c in gate.criteria for g in c.reads}
    assert read <= set(entry["runs"]), (
        f"{name}: its criteria read {sorted(read - set(entry['runs']))}, which docs/gates.json "
        f"lacks; run scripts/gates.py {name} --json docs/gates.json")
    for criterion in gate.criteria:
        try:
            criterion.holds_on(entry["runs"])
        except KeyError as key:
            pytest.fail(f"{name}: the criterion '{criterion.says}' reads {key}, which the rows "
                        "in docs/gates.json lack", pytrace=False)
    assert gate.passes(entry["runs"]) == entry["pass"], (
        f"{name}: the gate's criteria disagree with the verdict in docs/gates.json: "
        f"{gate.failures(entry['runs'])}")
    assert all(c.says in gate.text for c in gate.criteria)


def test_every_example_has_its_page_in_the_nav_in_the_gallerys_order():
    import sys

    sys.path.insert(0, str(ROOT / "docs" / "gen"))
    import tables

    assert [next(iter(entry)) for entry in tables.nav()] == list(EXAMPLES)
    assert all(f"examples/{name}.md" in entry.values()
               for name, entry in zip(EXAMPLES, tables.nav()))


def test_the_action_names_no_example_by_hand():
    """The action runs `python -m gallery smoke`, which reads the registry; a list of examples
    typed into action.yml would go stale when an example is added."""
    import yaml

    action = yaml.safe_load((ROOT / "action.yml").read_text())
    described = action["inputs"]["examples"]["description"]
    assert not [name for name in EXAMPLES if name in described], described
    assert any("-m gallery smoke" in step.get("run", "") for step in action["runs"]["steps"])


@pytest.mark.parametrize("name", sorted(examples()))
def test_its_size_keys_and_lr_keys_are_keys_of_its_config(name):
    """Out of memory names EXAMPLE.size_keys with their values, and divergence names
    EXAMPLE.lr_keys: each must be in the config."""
    from omegaconf import OmegaConf

    from gallery.core.cli import compose

    cfg = compose(name, [])
    for key in (*examples()[name].size_keys, *examples()[name].lr_keys):
        assert OmegaConf.select(cfg, key, default="missing") != "missing", f"{name}: {key}"


def test_an_example_is_its_module_its_config_and_its_test():
    """The registry finds examples by their primary config (configs/<name>/<name>.yaml) and keeps
    those that declare an EXAMPLE: no list of modules that are not examples to keep by hand. Every
    module that declares one is found, and has its test file; the tour is the one module with a
    config of its own that is not an example."""
    import pkgutil
    import re
    from pathlib import Path

    import gallery
    from gallery.core.config import config_root

    package = Path(gallery.__file__).parent
    modules = {m.name for m in pkgutil.iter_modules(gallery.__path__) if not m.ispkg}
    declaring = {m for m in modules
                 if re.search(r"^EXAMPLE = ", (package / f"{m}.py").read_text(), re.M)}
    configured = {m for m in modules if (config_root() / m / f"{m}.yaml").is_file()}
    assert declaring == set(EXAMPLES), declaring ^ set(EXAMPLES)
    assert configured - declaring == {"tour"}
    assert not [m for m in declaring if not (ROOT / "tests" / f"test_{m}.py").is_file()]


def test_the_text_examples_read_one_set_of_data_options():
    """Each example keeps its config groups in its own folder, so that its `--help` lists its own
    options and no other's. The examples on CPython's text share one data schema
    (gallery/data/text.py), and their data/ folders hold the same few lines: kept byte for byte
    the same here, so that a fix to one cannot miss the others."""
    from gallery.core.config import config_root

    text = [name for name, example in EXAMPLES.items()
            if "pydoc" in example.groups.get("data", "")]
    assert len(text) >= 2, text
    folders = {name: {p.name: p.read_bytes() for p in (config_root() / name / "data").iterdir()}
               for name in text}
    first = folders[text[0]]
    assert all(folder == first for folder in folders.values()), {
        name: sorted(k for k in set(first) | set(f) if first.get(k) != f.get(k))
        for name, f in folders.items()}


def test_no_example_imports_another_or_reads_a_config_key_it_lacks():
    """An example imports the library (gallery/core, gallery/data, nets.py, lm.py, backbones.py),
    never another example: what two examples share lives in the library. And it reads its config
    by attribute, never with getattr(cfg, key, default), which would read another example's key
    (grpo once read dpo's `dropout` that way)."""
    import ast

    import gallery

    package = ROOT / "gallery"
    found = []
    for name in EXAMPLES:
        tree = ast.parse((package / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr"
                  and getattr(node.args[0], "id", "") == "cfg"):
                found.append(f"{name}: getattr(cfg, ...) at line {node.lineno}")
                continue
            else:
                continue
            found += [f"{name} imports {m}" for m in modules
                      if m.startswith(f"{gallery.__name__}.") and m.split(".")[1] in EXAMPLES
                      and m.split(".")[1] != name]
    assert not found, found


def missing_keys(example: Example, summary: dict) -> list[str]:
    """The keys an example's declaration names that a run's summary lacks: its report's, and each
    gate's `keys` (a row is the summary's values at them, beside what `derive` adds and the wall
    time the gate runner adds)."""
    lacking = [f"report= names {k!r}" for k in example.report if k not in summary]
    for name, (_, gate) in gates({example.name: example}).items():
        derived = set(gate.derive(summary)) if gate.derive is not None else set()
        lacking += [f"the gate {name}'s keys= names {k!r}" for k in gate.keys
                    if k not in summary and k not in derived and k != "wall_seconds"]
    return lacking


def assert_declaration_holds(example: Example, summary: dict, tmp_path) -> None:
    """Every callback an example declares, called with the arguments its caller passes, and every
    key it names, found: headline and check on a run's summary (the tour, `smoke`); the tour
    figure with that summary as each mistake's run; each gate's `derive` on it, and its figure on
    its rows in docs/gates.json with that summary as each group's first (scripts/gates.py
    --figures). One line names the example and what failed."""
    from gallery.core import plots

    lacking = missing_keys(example, summary)
    assert not lacking, f"{example.name}: a run's summary lacks what its EXAMPLE names: {lacking}"
    assert isinstance(example.headline(summary), str), f"{example.name}: headline()"
    assert example.check(summary) is None, f"{example.name}: check() on a pattern run"
    for name, (_, gate) in gates({example.name: example}).items():
        fig = plots.pyplot().figure(figsize=example.figure_size)
        if gate.rows_figure is not None:
            gate.rows_figure(GATES[name]["runs"], {label: summary for label in GATES[name]["runs"]},
                             fig)
        elif gate.figure_runs:
            example.figure({gate.runs[label].mistake: summary for label in gate.figure_runs}, fig)
        else:
            continue
        plots.save(fig, tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 0, name
    fig = plots.pyplot().figure(figsize=example.figure_size)
    example.figure({m: summary for m in ("none", *example.mistakes)}, fig)
    plots.save(fig, tmp_path / "tour.png")


def test_the_median_declaration_is_no_longer_than_the_lesson():
    """What the tour, `show`, the pages and the gates read of an example (from its "# --- what
    the tour ..." section to the end of its file) stays no longer, in the median example, than
    what a reader copies and compares: its pattern and its mistakes sections together."""
    from statistics import median

    def section_lines(lines: list[str], starts: str) -> int:
        heads = [i for i, line in enumerate(lines) if line.startswith("# --- ")] + [len(lines)]
        first = next(i for i in heads if i < len(lines) and lines[i].startswith(starts))
        return heads[heads.index(first) + 1] - first

    ratios = {}
    for name in EXAMPLES:
        lines = (ROOT / "gallery" / f"{name}.py").read_text().splitlines()
        tour = next(i for i, line in enumerate(lines)
                    if line.startswith("# --- what the tour"))
        lesson = section_lines(lines, "# --- the pattern") + section_lines(lines,
                                                                          "# --- the mistakes")
        ratios[name] = (len(lines) - tour) / lesson
    assert median(ratios.values()) <= 1.0, sorted(ratios.items(), key=lambda item: item[1])
