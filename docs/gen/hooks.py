"""MkDocs hooks (mkdocs.yml `hooks:`): the Examples section of the nav comes from the gallery's
registry, in its order, so a new example's page is in the nav the moment its module declares its
`EXAMPLE`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tables  # noqa: E402  (docs/gen/tables.py)


def on_config(config):
    for entry in config["nav"]:
        if isinstance(entry, dict) and "Examples" in entry:
            entry["Examples"] = tables.nav()
            return config
    raise ValueError("mkdocs.yml: the nav has no 'Examples' section for the examples' pages")
