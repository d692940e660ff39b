"""The README's Python code is the pattern code itself: a card cannot drift from the functions it shows."""

from __future__ import annotations

import ast
import re

from gallery.core.registry import examples
from tests.conftest import ROOT


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_every_python_block_in_the_readme_is_verbatim_pattern_code():
    blocks = python_blocks()
    shown = set()
    for block in blocks:
        names = [node.name for node in ast.parse(block).body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        owners = [e for e in examples().values() if set(names) <= set(e.pattern_functions)]
        assert names and owners, f"a README block shows code that is not a pattern function: {names}"
        expected = "\n\n".join(owners[0].source(name).rstrip() for name in names) + "\n"
        assert block == expected, f"the README's copy of {names} differs from gallery/{owners[0].name}.py"
        shown.add(owners[0].name)
    assert shown == set(examples()), "every example's card shows its pattern"


def test_every_what_to_copy_line_names_real_pattern_functions():
    text = (ROOT / "README.md").read_text()
    lines = re.findall(r"What to copy: (.*?)(?:\n\n)", text, flags=re.S)
    known = {name for e in examples().values() for name in e.pattern_functions}
    assert len(lines) == len(examples())
    for line in lines:
        named = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", line))  # `fake = g(z)` and commands are not names
        assert named and named <= known, named - known


def test_the_lessons_table_lists_every_claim_with_its_status():
    from gallery import lessons

    text = (ROOT / "README.md").read_text()
    for name, lesson in lessons.LESSONS.items():
        assert f"| `{name}` | {lessons.claim(lesson)} | {lessons.status(name)} |" in text, name
