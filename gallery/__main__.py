"""`python -m gallery` lists the examples; `python -m gallery list` adds their mistakes;
`python -m gallery tour` runs the tour."""

from __future__ import annotations

import runpy
import sys

from gallery.core.registry import examples

USAGE = "usage: python -m gallery [list | tour [hydra overrides]]"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else ""
    found = examples()
    if command in ("", "list"):
        if not found:
            print("no examples yet")
        for name, example in found.items():
            if command == "list":
                print(example.describe())
                print()
            else:
                print(f"{name:10s} {example.pattern}")
        if command == "":
            print("\nrun one: python -m gallery.<name> [key=value ...]   details: python -m gallery list")
        return 0
    if command == "tour":
        # Run it as `python -m gallery.tour` would, so Hydra finds configs/ beside the package.
        sys.argv = [sys.argv[0], *argv[1:]]
        runpy.run_module("gallery.tour", run_name="__main__", alter_sys=True)
        return 0
    print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
