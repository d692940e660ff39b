"""The "Add an example" page (docs/add-an-example.md), followed in a scratch copy of the checkout:
an example is its file, its YAML and its test, and everything else finds it through its
`EXAMPLE`. Two ways in, as a contributor would take them:

- the recipe's own example, `mimic` (tests/recipe/: its file, its YAML, its test), dropped in
  and measured by its gate;
- an existing example copied to a new name: its file and its YAML copied, `name=` changed.

Each must show in `python -m gallery list` and `show`, run in the smoke test, get its page in
the site's nav and its rows in the check table; what it still lacks is named by the tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

RECIPE = ROOT / "tests" / "recipe"
COPIED = ("gallery", "configs", "docs", "scripts", "tests", "mkdocs.yml", "pyproject.toml",
          "README.md", "action.yml")


def in_checkout(checkout: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(checkout), "GALLERY_CACHE": str(checkout / ".cache")}
    return subprocess.run([sys.executable, *args], cwd=checkout, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A scratch copy of this checkout with the recipe's example in it, and dqn copied to
    `dqn_copy` by its file and its YAML, with `name=` changed."""
    root = tmp_path_factory.mktemp("checkout")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "outputs", "site", "recipe")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=ignore)
        else:
            shutil.copy2(source, root / name)
    shutil.copytree(RECIPE, root, dirs_exist_ok=True)  # gallery/, configs/, tests/
    text = (ROOT / "gallery" / "dqn.py").read_text()
    assert text.count('name="dqn",') == 1
    (root / "gallery" / "dqn_copy.py").write_text(text.replace('name="dqn",', 'name="dqn_copy",'))
    shutil.copytree(ROOT / "configs" / "dqn", root / "configs" / "dqn_copy")
    (root / "configs" / "dqn_copy" / "dqn.yaml").rename(root / "configs" / "dqn_copy" /
                                                        "dqn_copy.yaml")
    proc = in_checkout(root, "-c", "import gallery; print(gallery.__file__)")
    assert proc.stdout.strip() == str(root / "gallery" / "__init__.py"), proc.stderr
    return root


@pytest.mark.parametrize("name", ["mimic", "dqn_copy"])
def test_a_new_example_shows_in_list_and_show(checkout, name):
    listing = in_checkout(checkout, "-m", "gallery", "list")
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert f"{name}:" in listing.stdout
    shown = in_checkout(checkout, "-m", "gallery", "show", name)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "(pattern)" in shown.stdout and "(mistake)" in shown.stdout  # each mistake as a diff


def test_the_smoke_run_runs_both_with_their_probes(checkout):
    proc = in_checkout(checkout, "-m", "gallery", "smoke", "device=cpu", "junit=smoke.xml",
                       "examples=mimic,dqn_copy")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    junit = (checkout / "smoke.xml").read_text()
    assert 'name="mimic' in junit and 'name="dqn_copy' in junit


def test_the_nav_the_check_table_and_the_readme_derive_both(checkout):
    code = ("import sys, json; sys.path.insert(0, 'docs/gen'); import tables; "
            "print(json.dumps({'nav': tables.nav(), 'checks': tables.check_table()}))")
    proc = in_checkout(checkout, "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    derived = json.loads(proc.stdout)
    nav = [next(iter(entry)) for entry in derived["nav"]]
    assert "mimic" in nav and "dqn_copy" in nav
    assert nav.index("dqn_copy") < nav.index("mimic")  # by `order`: the copy's 1, then 50
    assert ("| [mimic](examples/mimic.md) | `teacher_grad` | `no_grad_reaches` |"
            in derived["checks"])
    assert any(row.startswith("| [dqn_copy](examples/dqn_copy.md) | `target_grad` |")
               for row in derived["checks"])


def test_the_tests_name_what_the_copy_still_lacks_and_the_recipe_passes_them(checkout):
    """The recipe's example, measured by its own gate, passes every test that enumerates
    examples; the bare copy fails them by name: no gates.json entry, no check_step."""
    gate = in_checkout(checkout, "scripts/gates.py", "mimic", "--json", "docs/gates.json")
    assert gate.returncode == 0, gate.stdout[-2000:] + gate.stderr[-2000:]
    assert "## mimic: PASS" in gate.stdout
    proc = in_checkout(checkout, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p",
                       "no:xdist", "tests/test_registry.py", "tests/test_check.py",
                       "tests/test_gallery_cli.py", "tests/test_patterns.py",
                       "tests/test_mimic.py", "-k", "mimic or dqn_copy or every_example",
                       timeout=600)
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:]
    # -rA's summary: one "<VERDICT> <test>" line per test, however long its name
    verdicts = [line.split()[:2] for line in out.splitlines()
                if line.startswith(("PASSED tests/", "FAILED tests/"))]
    failed = [test for verdict, test in verdicts if verdict == "FAILED"]
    passed = [test for verdict, test in verdicts if verdict == "PASSED"]
    # only the copy fails: its own tests, and the one table test that lists what it lacks
    table = "tests/test_check.py::test_every_example_has_its_check_step_and_every_mistake_a_check"
    assert failed and all("dqn_copy" in test or test.startswith(table) for test in failed), failed
    assert "dqn_copy: docs/gates.json has no entry" in out
    assert "tests/test_dqn_copy.py has no check_step(mistake)" in out
    ran = [test for test in passed if "mimic" in test]
    assert len(ran) >= 9, passed  # the registry's, the check table's, --help's, the patterns'
    #                               and its own tests
