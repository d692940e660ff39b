"""The pytest plugin (entry point `pytest11`, loaded in any project where detach-gallery is
installed): the `gallery_check` fixture is the `gallery.check` module, for tests that prefer a
fixture to an import. Importing this file costs nothing: torch loads only when a test asks for the
fixture."""

from __future__ import annotations

import types

import pytest


@pytest.fixture
def gallery_check() -> types.ModuleType:
    """gallery.check: no_grad_reaches, gets_grad, unchanged, constant, bounded_memory."""
    import gallery.check

    return gallery.check
