"""docs/gen/face.py, the top of each example page: the docstring as prose with its sketch as code,
the mistakes' words read from it, and the numbers a gate's criteria read."""

from __future__ import annotations

import sys

from gallery.core.registry import Criterion, Example, Gate, Mistake, Runs, avg, examples
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "docs" / "gen"))
import face  # noqa: E402

DOC = '''A lesson: the cut goes here.

    y = f(x.detach())          # the sketch

    z = g(y)

Some prose, with `code`.

The mistakes (`mistake=`), and what they cost (scripts/gates.py demo):

- no_detach: the graph runs on: it holds
  every activation.
- other: something else.

Run: python -m gallery.demo seed=0   (data=x | y;
     the default is x)
'''


def test_the_docstring_becomes_prose_a_sketch_and_each_mistakes_words():
    lead, words, run = face.docstring_parts(DOC, {"no_detach": None, "other": None})
    text = "\n".join(lead)
    assert "```python\ny = f(x.detach())          # the sketch\n\nz = g(y)\n```" in text
    assert "Some prose, with `code`." in text and "The mistakes" not in text
    assert "no_detach" not in text and "Run:" not in text
    assert words == {"no_detach": "the graph runs on: it holds every activation.",
                     "other": "something else."}
    assert face.run_block(run) == ["```bash", "# (data=x | y;", "#  the default is x)",
                                   "python -m gallery.demo seed=0", "```", ""]


def test_a_criterion_names_the_keys_it_reads_and_the_page_shows_them_pattern_to_mistake():
    gate = Gate("demo", runs={"none": Runs(), "slow": Runs("slow")},
                criteria=(Criterion("slow holds more bytes", ("none", "slow"),
                                    lambda p, m: avg(m, "held_bytes") > avg(p, "held_bytes")),))
    runs = {"none": [{"held_bytes": 0, "acc": 0.9, "wall_seconds": 3.0}] * 2,
            "slow": [{"held_bytes": 3 * 2**20, "acc": 0.9, "wall_seconds": 9.0}] * 2}
    assert face.keys_read(gate.criteria[0], runs) == {"none": {"held_bytes"},
                                                      "slow": {"held_bytes"}}
    example = Example("demo", "a cut", (), mistakes={"slow": Mistake("d", "c")}, gate=gate)
    assert face.from_criteria(example, {"runs": runs}, "slow") == ["held bytes 0 B → 3 MiB"]
    runs["slow"] = [{"held_bytes": 0, "acc": 0.9}] * 2  # as the pattern: no cost to show
    assert face.from_criteria(example, {"runs": runs}, "slow") == []


def test_every_example_says_a_measured_cost_for_some_mistake():
    import json

    import tables

    gates = json.loads((ROOT / "docs" / "gates.json").read_text())
    measured = tables.measurements()
    for name, example in examples().items():
        said = face.mistake_figures(example, gates.get(name, {}), measured.get(name))
        assert any(any(ch.isdigit() for ch in " ".join(p)) for p in said.values()), name
