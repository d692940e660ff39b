"""What each example is and what its mistakes cost: the one place `python -m gallery`, `--help`
and the tour read from. An example exists here only once its module does."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field

import gallery


@dataclass(frozen=True)
class Mistake:
    description: str  # what the code does wrong, in one line
    consequence: str  # what it costs, in one line


@dataclass(frozen=True)
class Example:
    name: str
    pattern: str  # the pattern, in one line
    mistakes: dict[str, Mistake] = field(default_factory=dict)

    def describe(self) -> str:
        lines = [f"{self.name}: {self.pattern}", "", "mistake= choices (default: none, the pattern):"]
        for key, mistake in self.mistakes.items():
            lines.append(f"  {key}: {mistake.description}")
            lines.append(f"  {' ' * len(key)}  -> {mistake.consequence}")
        return "\n".join(lines)


_NOT_EXAMPLES = {"tour", "__main__"}


def examples() -> dict[str, Example]:
    """Every module in the gallery package that declares an `EXAMPLE`, in name order."""
    found: dict[str, Example] = {}
    for info in sorted(pkgutil.iter_modules(gallery.__path__), key=lambda m: m.name):
        if info.ispkg or info.name in _NOT_EXAMPLES:
            continue
        module = importlib.import_module(f"gallery.{info.name}")
        example = getattr(module, "EXAMPLE", None)
        if isinstance(example, Example):
            found[example.name] = example
    return found
