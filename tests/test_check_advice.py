"""The check page's advice, held to what it promises: each row of its "which check, for which
situation" table catches the gallery mistakes it names, in the form it names; each check's misuse
is loud (a block check made without `with` says so, and the pytest plugin fails the test); and
each message starts with the name the user called. The tests are written as a user writes their
own: the step, the check as the page advises it, the verdict, the message's first words."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gallery.check
from gallery.check import (
    CheckNotEntered,
    NothingToCheck,
    finite,
    frozen,
    gets_grad,
    has_graph,
    modes_restored,
    no_grad_reaches,
    runs_in_eval_mode,
    runs_in_train_mode,
    same_grad_as,
    unchanged,
    updated,
)
from gallery.core.registry import examples
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "docs" / "gen"))
import tables  # noqa: E402  (docs/gen/tables.py: the check page's table)

EXAMPLES = examples()


# --- the table's advice -------------------------------------------------------------------------

def advised(row) -> set[str]:
    """The checks a row names, as a user would call them."""
    return set(re.findall(r"`(\w+)\(", row.checks)) & set(gallery.check.__all__)


@pytest.mark.parametrize("row", tables.SITUATIONS, ids=[r.situation for r in tables.SITUATIONS])
def test_each_row_advises_the_check_that_catches_each_mistake_it_names(row):
    """Each mistake a row is for fails, in its example's own step (tests/test_<example>.py
    `check_step`, which tests/test_check.py runs), with the sentence its EXAMPLE names: a check
    this row advises (`frozen` is `no_grad_reaches` and `unchanged` together). has_graph's two
    forms see different things (`reaches=` passes a first-order inner step), so a has_graph row
    must advise the very tensors that step checks."""
    assert row.mistakes, f"{row.situation}: names no mistake it is for"
    checks, wrong = advised(row), []
    for entry in row.mistakes:
        name, key = entry.split(":")
        caught = EXAMPLES[name].mistakes[key].caught
        check = caught.split(":")[0]
        covered = check in checks or ("frozen" in checks
                                      and check in ("no_grad_reaches", "unchanged"))
        if not covered:
            wrong.append(f"{entry} is caught by {check}, which the row does not advise")
        elif check == "has_graph":
            keyword = re.match(r"has_graph: (\w+)", caught).group(1)
            if f"has_graph({keyword}=" not in row.checks:
                wrong.append(f"{entry} is caught by has_graph({keyword}=...), the row advises "
                             f"{row.checks}")
    assert not wrong, f"{row.situation}: {wrong}"


def inner_step(model, x, y, create_graph):
    params = dict(model.named_parameters())
    loss = F.mse_loss(torch.func.functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    return grads, {name: p - 0.01 * g for (name, p), g in zip(params.items(), grads)}


def test_a_first_order_inner_step_fails_the_maml_rows_advice():
    """The row's advice, has_graph on the inner gradients, fails the inner step taken without
    create_graph=True; the form it warns against (`reaches=`) passes it, as has_graph's docstring
    says."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    grads, fast = inner_step(model, torch.randn(8, 1), torch.randn(8, 1), create_graph=False)
    has_graph(fast_weights=list(fast.values()), reaches=model)  # passes: p - lr * g reaches p
    with pytest.raises(AssertionError, match=r"^has_graph: inner_grads\[0\]"):
        has_graph(inner_grads=grads)
    grads, _ = inner_step(model, torch.randn(8, 1), torch.randn(8, 1), create_graph=True)
    has_graph(inner_grads=grads)
    assert "What `reaches=` does not catch" in has_graph.__doc__


def test_a_nan_loss_fails_finite_on_the_loss_while_the_model_is_still_finite():
    """`log` of a negative number: the loss is NaN, the parameters and grads not yet. The table's
    row names `finite(loss=loss)`; `finite(model=...)` alone passes this step."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    loss = torch.log(model(torch.randn(4, 2)).sum() - 1e6)
    finite(model=model)  # what it sees (parameters, grads, buffers) is still finite
    with pytest.raises(AssertionError, match=r"^finite: loss"):
        finite(loss=loss)
    row = next(r for r in tables.SITUATIONS if r.situation == "any training step")
    assert "`finite(loss=loss)`" in row.checks


# --- a block check made without `with` ----------------------------------------------------------

BLOCKS = {
    "frozen": lambda m: frozen(teacher=m),
    "no_grad_reaches": lambda m: no_grad_reaches(target=m),
    "unchanged": lambda m: unchanged(target=m),
    "updated": lambda m: updated(ema=m),
    "gets_grad": lambda m: gets_grad(m),
    "modes_restored": lambda m: modes_restored(m),
    "runs_in_eval_mode": lambda m: runs_in_eval_mode(m),
    "runs_in_train_mode": lambda m: runs_in_train_mode(m),
    "same_grad_as": lambda m: same_grad_as(lambda: m(torch.ones(1, 2)).sum().backward(), model=m),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_a_block_check_called_as_a_statement_warns_that_it_checked_nothing(name):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        BLOCKS[name](nn.Linear(2, 1))  # a plain statement: the block form, never entered
    told = [str(w.message) for w in seen if issubclass(w.category, CheckNotEntered)]
    assert len(told) == 1 and told[0].startswith(f"{name}: made at {__file__}:"), told
    assert f"`with gallery.check.{name}(...):`" in told[0]
    gallery.check._never_entered.clear()  # told here on purpose; the plugin would fail the test


def test_a_block_check_entered_says_nothing():
    model = nn.Linear(2, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckNotEntered)
        with frozen(teacher=model), unchanged(target=model):
            model(torch.ones(1, 2))
    assert not gallery.check._never_entered


def test_the_pytest_plugin_fails_a_test_whose_check_was_never_entered(tmp_path):
    """In another project, through the entry point: the check that was never entered fails its
    test, naming the check and its line; the one entered passes. `pytest --fixtures` lists every
    check in the fixture's help."""
    (tmp_path / "test_mine.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def test_teacher_is_frozen(gallery_check):
            teacher = nn.Linear(2, 1)
            gallery_check.frozen(teacher=teacher)  # forgot the with
            teacher(torch.randn(3, 2))

        def test_teacher_is_frozen_with_with(gallery_check):
            teacher = nn.Linear(2, 1).requires_grad_(False)
            with gallery_check.frozen(teacher=teacher):
                teacher(torch.randn(3, 2))
        """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_mine.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout[-3000:]
    assert "frozen: made at" in proc.stdout and "test_mine.py:7 and never entered" in proc.stdout
    fixtures = subprocess.run([sys.executable, "-m", "pytest", "--fixtures", "-q", "-p",
                               "no:cacheprovider", "test_mine.py"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300).stdout
    help_text = fixtures.split("gallery_check", 1)[1]
    checks = [n for n in gallery.check.__all__ if n[0].islower()]
    assert len(checks) == 15 and not [n for n in checks if n not in help_text], help_text[:800]


# --- each message starts with the name the user called -------------------------------------------

def test_frozen_with_nothing_to_check_says_frozen():
    with pytest.raises(NothingToCheck, match=r"^frozen: name at least one module or tensor"):
        with frozen():
            pass


def test_a_failing_frozen_says_frozen():
    teacher = nn.Linear(2, 1)  # requires grad: the mistake
    with pytest.raises(AssertionError, match=r"^frozen: a backward wrote a grad into teacher"):
        with frozen(teacher=teacher):
            teacher(torch.randn(3, 2)).sum().backward()


def test_a_failing_frozen_from_a_changed_value_says_frozen():
    teacher = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).requires_grad_(False)
    with pytest.raises(AssertionError, match=r"^frozen: the block changed teacher") as failed:
        with frozen(teacher=teacher):
            teacher(torch.randn(4, 2))  # BatchNorm in train mode moves its statistics
    assert "help(gallery.check.frozen)" in str(failed.value)


def test_an_error_of_the_block_itself_passes_through_frozen_as_it_is():
    with pytest.raises(AssertionError, match=r"^unchanged: my own"):
        with frozen(teacher=nn.Linear(2, 1).requires_grad_(False)):
            raise AssertionError("unchanged: my own assertion, not the check's")


@pytest.mark.parametrize("reference", [nn.Linear(2, 1), 3], ids=["a module", "an int"])
def test_same_grad_as_given_no_step_says_what_to_pass(reference):
    model = nn.Linear(2, 1)
    with pytest.raises(TypeError, match=r"^same_grad_as: its first argument is the reference "
                                        r"step, a function of no arguments"):
        with same_grad_as(reference, model=model):
            pass


def test_same_grad_as_around_no_backward_says_so_not_the_micro_batch_hint():
    model = nn.Linear(2, 1)
    with pytest.raises(AssertionError, match=r"^same_grad_as: no backward inside the block") as e:
        with same_grad_as(lambda: model(torch.ones(4, 2)).sum().backward(), model=model):
            model(torch.ones(4, 2))  # forgot the backward
    assert "micro-batch means" not in str(e.value)
