"""The quick tour's budget rule, held against what scripts/bench.py tour measured and recorded (no
wall clock is read here): the warm quick tour takes at most 60 s on the machine named in
docs/bench.json and no example more than a fifth of it, and the record is current, made with every
example's quick budget as the code declares it now."""

import json

from gallery.core.registry import examples
from tests.conftest import ROOT

REMEASURE = "run scripts/bench.py tour --json docs/bench.json"


def recorded() -> dict:
    """The whole tour's row, with each example's row under "examples"."""
    rows = json.loads((ROOT / "docs" / "bench.json").read_text())["tour"]
    return {**rows[0], "examples": {row["example"]: row for row in rows[1:]}}


def test_every_example_has_a_current_quick_tour_record():
    row, missing = recorded(), []
    for name, example in examples().items():
        if name not in row["examples"]:
            missing.append(f"{name}: no quick-tour record; {REMEASURE}")
        elif row["examples"][name]["budget"] != example.budgets["quick"]:
            missing.append(f"{name}: its quick budget is not the one measured; {REMEASURE}")
    stale = sorted(set(row["examples"]) - set(examples()))
    missing += [f"{name}: recorded but no longer an example; {REMEASURE}" for name in stale]
    assert not missing, "\n".join(missing)


def test_the_recorded_quick_tour_keeps_the_budget_rule():
    row = recorded()
    assert row["target_seconds"] == 60 and row["target_share"] == 0.2
    assert row["seconds"] <= row["target_seconds"], row["seconds"]
    over = {name: e["share"] for name, e in row["examples"].items()
            if e["share"] > row["target_share"]}
    assert not over, f"more than a fifth of the quick tour: {over}"
    assert sum(e["runs_seconds"] for e in row["examples"].values()) < row["seconds"]
