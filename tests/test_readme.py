"""The README is one screen of true statements: short, its code is the pattern code itself, its
table is what the measured JSON says, and every file it links to exists."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

from gallery.core.registry import examples
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_the_readme_fits_on_one_screen_in_the_promised_order():
    assert len(README.splitlines()) <= 200
    order = ["# Detach Gallery", "![", "## The gallery", "## Quick start", "## Copy a pattern",
             "## Check your own training step", "## Use it in your CI", "## Documentation"]
    positions = [README.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert "scripts/run.sh " in README and "scripts/test.sh " in README and "budget=full" in README


def test_every_python_block_in_the_readme_is_verbatim_pattern_code():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    user_tests = (ROOT / "tests" / "test_check_docs.py").read_text()
    for block in blocks:
        names = [node.name for node in ast.parse(block).body if isinstance(
            node, (ast.FunctionDef, ast.ClassDef))]
        if names and all(name.startswith("test_my_") for name in names):
            assert block in user_tests, f"the README's {names} differs from its test file"
            continue
        owners = [e for e in examples().values() if set(names) <= set(e.pattern_functions)]
        assert names and owners, (f"a README block shows code that is not a pattern function: "
                                  f"{names}")
        expected = "\n\n".join(owners[0].source(name).rstrip() for name in names) + "\n"
        assert block == expected, (f"the README's copy of {names} differs from "
                                   f"gallery/{owners[0].name}.py")


def test_the_gallery_table_is_what_the_json_files_say():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "figures.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = re.findall(r"^\| \[`(\w+)`\]", README, flags=re.M)
    assert sorted(rows) == sorted(examples())


def test_every_file_the_readme_links_exists():
    links = re.findall(r"\]\(([^)#]+)\)", README)
    assert links
    for link in links:
        assert (ROOT / link).exists(), link


def test_the_check_section_prints_what_the_check_prints():
    """The README's failure message is the one the check raises today, word for word."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_readme_check_docs",
                                                  ROOT / "tests" / "test_check_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.gan_without_detach()
    except AssertionError as err:
        message = str(err)
    else:
        raise AssertionError("the README's mistake passed its check")
    section = README[README.index("## Check your own training step"):README.index(
        "## Use it in your CI")]
    assert f"```text\n{message}\n```" in section
