"""`python -m gallery [list | show <example> | lessons [name ...] | smoke [k=v ...] | tour
[overrides]]`."""

from __future__ import annotations

import sys

from gallery.core.registry import examples

USAGE = """usage: python -m gallery [list | show <example> | lessons [name ...] | smoke [k=v ...]
                         | tour [overrides]]

  (no command)     the examples, one line each
  list             every example with its mistake= choices and what each costs
  show <example>   the pattern functions to copy, then each mistake as a diff to them (the fix)
  lessons          the tutorial's claims about detaching, each run and asserted (exit 1: one failed)
  smoke            every pattern for a few steps with its probe: a CI smoke test
                   (device=cuda junit=x.xml)
  tour             every pattern next to its mistakes, with a report (budget=quick: a fast pass)"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else ""
    if command in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    found = examples()
    if command in ("", "list"):
        for name, example in found.items():
            if command == "list":
                print(example.describe())
                print()
            else:
                print(f"{name:10s} {example.pattern}")
        if command == "":
            print("\nrun one: python -m gallery.<name> [key=value ...]   the code: python -m "
                  "gallery show <name>")
        return 0
    if command == "show":
        if len(argv) != 2 or argv[1] not in found:
            print(f"usage: python -m gallery show <example>; the examples: {', '.join(found)}",
                  file=sys.stderr)
            return 2
        print(found[argv[1]].show())
        return 0
    if command == "lessons":
        from gallery import lessons

        return lessons.main(argv[1:])
    if command == "smoke":
        from gallery import smoke

        return smoke.main(argv[1:])
    if command == "tour":
        # As `python -m gallery.tour` would run it, so Hydra reads the command line as usual. A
        # plain import, not runpy: under pytest, whose assertion rewriter loads every module of a
        # package that ships a pytest plugin, runpy cannot get at the module's code.
        from gallery import tour

        sys.argv = [sys.argv[0], *argv[1:]]
        tour.main()
        return 0
    print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
