"""The pytest plugin (entry point `pytest11`, loaded in any project where detach-gallery is
installed): the `gallery_check` fixture is the `gallery.check` module, for tests that prefer a
fixture to an import; and a test that makes a block check without `with` (which then checks
nothing) fails, naming the check and the line. Importing this file costs nothing: torch loads only
when a test asks for the fixture or imports gallery.check."""

from __future__ import annotations

import sys
import types

import pytest


@pytest.fixture
def gallery_check() -> types.ModuleType:
    """gallery.check, every check: around a step, `with` frozen, no_grad_reaches, gets_grad,
    unchanged, updated, modes_restored, runs_in_eval_mode, runs_in_train_mode, same_grad_as or
    finite; at once, gets_grad(..., loss=...), constant, has_graph, disjoint, optimizer_covers,
    finite and bounded_memory. A block check made without `with` fails the test."""
    import gallery.check

    return gallery.check


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A block check the test made and never entered checked nothing: the test fails, with what
    the check's own warning (gallery.check.CheckNotEntered) says."""
    check = sys.modules.get("gallery.check")
    if check is not None:
        check._never_entered.clear()
    result = yield
    check = sys.modules.get("gallery.check")
    if check is not None and check._never_entered:
        found = list(check._never_entered)
        check._never_entered.clear()
        raise AssertionError("; ".join(found))
    return result
