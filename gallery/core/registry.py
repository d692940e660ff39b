"""What each example is, what its mistakes cost, and what everything around it needs of it: the one
place `python -m gallery`, `--help`, `show`, the tour, the learning gates (scripts/gates.py), the
README's table, the hero figure, the site's nav and the check table read from. Each example module
declares its own `EXAMPLE`; an example exists here only once its module does, and a test names any
field an example leaves out (tests/test_registry.py)."""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import json
import pkgutil
import re
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any, NamedTuple, Protocol

import gallery
from gallery.core.config import config_root

# --- what each callback an example declares is called with: checked when it is declared ----------

class Headline(Protocol):
    def __call__(self, summary: dict, /) -> str: ...  # the tour's one-line result of a run


class Check(Protocol):
    def __call__(self, summary: dict, /) -> str | None: ...  # None when the pattern held


class TourFigure(Protocol):
    # each mistake's summary (the tour's runs, or a gate's first seed), and the figure to draw on
    def __call__(self, runs: dict[str, dict], fig: Any, /) -> None: ...


class RowsFigure(Protocol):
    # a gate's rows by group, each group's first full summary, and the figure to draw on
    def __call__(self, rows: dict[str, list[dict]], first: dict[str, dict], fig: Any, /) -> None:
        ...


class Derive(Protocol):
    def __call__(self, summary: dict, /) -> dict: ...  # more columns for a gate's row


class MeasuredFrom(Protocol):
    # the example's entry in docs/gates.json, and docs/bench.json
    def __call__(self, gate: dict, bench: dict, /) -> Measured: ...


def require_callable_as(owner: str, field_name: str, function: Any, protocol: type) -> None:
    """Refuse a callback that cannot take the arguments its caller passes, when it is declared
    (not after a gate's last run): one line naming the declaration, the field and both
    signatures."""
    if function is None:
        return
    wanted = inspect.signature(protocol.__call__)
    arguments = [p for p in wanted.parameters.values() if p.name != "self"]
    try:
        inspect.signature(function).bind(*(object() for _ in arguments))
    except TypeError as error:
        shown = ", ".join(p.name for p in arguments)
        raise TypeError(f"{owner}: {field_name}={getattr(function, '__name__', function)!s} is "
                        f"called with ({shown}) but its signature is "
                        f"{inspect.signature(function)}: {error}") from None


@dataclass(frozen=True)
class Mistake:
    description: str  # what the code does wrong, in one line
    consequence: str  # what it costs, in one line
    variants: tuple[str, ...] = ()  # the functions that replace pattern functions, by name
    # Which public check catches it: the start of the sentence the check fails with when the
    # example's `check_step` (in tests/test_<example>.py) runs this mistake, "<check>: ...". Or,
    # where no check can, why not (`no_check`). Exactly one of the two.
    caught: str = ""
    no_check: str = ""
    # What its consequence needs that a run in one process at the tour's budget lacks (two
    # processes, a GPU): the tour says so instead of printing the pattern's numbers as if they
    # were the mistake's.
    needs: str = ""


@dataclass(frozen=True)
class Runs:
    """One group of a gate's runs: one mistake at these seeds, with these overrides ({tmp}: the
    gate's scratch folder)."""
    mistake: str = "none"
    seeds: tuple[int, ...] = (0, 1, 2)
    overrides: tuple[str, ...] = ()
    processes: int = 1  # more than 1: each run under torchrun, that many gloo processes


class Criterion(NamedTuple):
    """One thing a gate asserts: the sentence that says it, the groups of runs it reads, and the
    predicate that decides it, given those groups' rows (one list per group, in `reads` order;
    `each` makes one from a predicate on one seed's rows). `timed` marks a bound on wall time:
    scripts/gates.py holds it, and the test tier leaves it alone (a test never asserts a
    wall-clock time)."""
    says: str
    reads: tuple[str, ...]
    holds: Callable[..., bool]
    timed: bool = False

    def holds_on(self, runs: dict[str, list[dict]]) -> bool | None:
        """Whether it holds on these rows by group; None when a group it reads is not there."""
        if not all(group in runs for group in self.reads):
            return None
        return bool(self.holds(*(runs[group] for group in self.reads)))


def each(predicate: Callable[..., bool]) -> Callable[..., bool]:
    """A criterion's predicate that holds on every seed: it takes one row of each group the
    criterion reads, the same seed's (groups list their rows in seed order)."""
    def holds(*groups: list[dict]) -> bool:
        return all(predicate(*rows) for rows in zip(*groups))
    return holds


@dataclass(frozen=True)
class Gate:
    """A learning gate: what it runs, what each run keeps, and what passes, each criterion written
    once. `scripts/gates.py <example>` runs it and writes {"runs": {group: [row per seed]}, "pass":
    bool} to docs/gates.json; the verdict, the gate's text and the seed-0 learning test
    (tests/test_learning.py) all read `criteria`. A gate whose runs are not a table of seeds in one
    process (Hydra sweeps two jobs at a time, a curve) names the function under scripts/measure/
    that runs them instead, `measure="module:function"`, and its criteria read the groups that
    function returns."""
    target: str  # what it runs, in words; the criteria's sentences follow it
    runs: dict[str, Runs] = field(default_factory=dict)
    keys: tuple[str, ...] = ()  # what a row keeps of a run's summary, beside its wall time
    criteria: tuple[Criterion, ...] = ()
    derive: Derive | None = None  # more columns for a row, from a summary
    # The tour figure drawn from the first seed of these groups, and its title (scripts/gates.py
    # --figures DIR writes it to DIR/<example>.png).
    figure_runs: tuple[str, ...] = ()
    figure_title: str = ""
    figure_file: str = ""  # default: <example>.png
    # or a figure drawn from the gate's rows and each group's first full summary:
    # (rows by group, first summary by group, a matplotlib figure)
    rows_figure: RowsFigure | None = None
    measure: str = ""

    def __post_init__(self) -> None:
        where = f"the gate '{self.target}'"
        if isinstance(self.keys, str):  # ("key") is a string, read one character at a time
            raise TypeError(f"{where}: keys=({self.keys!r}) is a string; write ({self.keys!r},)")
        require_callable_as(where, "derive", self.derive, Derive)
        require_callable_as(where, "rows_figure", self.rows_figure, RowsFigure)
        if not self.measure:  # a measure's groups are known only once it runs
            unknown = sorted({g for c in self.criteria for g in c.reads} - set(self.runs))
            if unknown:
                raise ValueError(f"{where}: a criterion reads {unknown}, which are not its runs "
                                 f"{sorted(self.runs)}")
        if set(self.figure_runs) - set(self.runs):
            raise ValueError(f"{where}: figure_runs names "
                             f"{sorted(set(self.figure_runs) - set(self.runs))}, not its runs")

    @property
    def text(self) -> str:
        """What the gate runs and what passes, in words."""
        return f"{self.target}: {'; '.join(c.says for c in self.criteria)}"

    def failures(self, runs: dict[str, list[dict]], *, untimed: bool = False) -> list[str]:
        """The sentences of the criteria that do not hold on these rows. `untimed`: leave out the
        bounds on wall time, and any criterion reading a group that is not in `runs` (the test
        tier runs a subset)."""
        chosen = [c for c in self.criteria if not untimed
                  or (not c.timed and all(g in runs for g in c.reads))]
        if untimed and not chosen:
            raise ValueError(f"no criterion of the gate '{self.target}' reads only {sorted(runs)}")
        return [c.says for c in chosen if not c.holds_on(runs)]

    def passes(self, runs: dict[str, list[dict]]) -> bool:
        """Every criterion holds on these rows."""
        return not self.failures(runs)

    def tested(self) -> dict[str, Runs]:
        """The groups the test tier runs at seed 0: those its untimed criteria read."""
        read = {g for c in self.criteria if not c.timed for g in c.reads}
        return {label: runs for label, runs in self.runs.items()
                if label in read and 0 in runs.seeds}


class Panel(NamedTuple):
    """One panel of the hero figure: a metric, the pattern's value and its mistake's, and which way
    is better where the two values do not say it ("" : the pattern's side of the mistake)."""
    metric: str
    pattern: float
    mistake: float
    mistake_label: str
    better: str = ""


class Cost(NamedTuple):
    """What one mistake costs against the pattern, as ratios (mistake over pattern), and where the
    figures come from. None where it was not measured."""
    mistake: str
    time: float | None
    bytes: float | None
    source: str


class Measured(NamedTuple):
    """What an example's measurements say, for the README's row (what the pattern measured, what
    its best-known mistake measured, in words), its panel of the hero figure, and what its
    costliest mistake costs (the performance page)."""
    readme: tuple[str, str]
    hero: Panel
    cost: Cost


def tour_budgets(mistakes: Iterable[str], quick: Sequence[str], **needs: Sequence[str]
                 ) -> dict[str, dict[str, list[str]]]:
    """The tour's two budgets: each run at the example's defaults ("full") or with `quick`'s
    overrides, and a mistake that `needs` a setting to show its consequence given it in both."""
    return {"full": {m: [*needs.get(m, ())] for m in mistakes},
            "quick": {m: [*quick, *needs.get(m, ())] for m in mistakes}}


def avg(rows: list[dict], key: str) -> float:
    """The mean of one column over a gate's rows (its seeds)."""
    return mean(row[key] for row in rows)


def cost_of(mistake: str, pattern: list[dict], rows: list[dict], source: str,
            rate: str | None = None, held: str | None = None) -> Cost:
    """What a mistake costs from a gate's rows (the pattern's group and the mistake's): how many
    times slower it runs (the pattern's `rate` over its own) and how many times the bytes it holds
    (its `held` over the pattern's); None where the key is not given."""
    return Cost(mistake, avg(pattern, rate) / avg(rows, rate) if rate else None,
                avg(rows, held) / avg(pattern, held) if held else None, source)


def span(values: list[float], fmt: str = "{:,.0f}") -> str:
    """"low-high", or one value when they agree."""
    low, high = min(values), max(values)
    return fmt.format(low) if low == high else f"{fmt.format(low)}-{fmt.format(high)}"


def bench_row(bench: dict, name: str, key: str) -> dict:
    """The first row of `scripts/bench.py <name>` in bench.json that has `key`."""
    return next(row for row in bench[name] if key in row)


@dataclass(frozen=True)
class Example:
    name: str
    pattern: str  # the pattern, in one line
    pattern_functions: tuple[str, ...]  # what a reader copies, by name, in reading order
    mistakes: dict[str, Mistake] = field(default_factory=dict)
    # The tour: overrides per budget ("full", "quick") and mistake; a one-line result; a figure.
    budgets: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    headline: Headline | None = None
    figure: TourFigure | None = None
    figure_size: tuple[float, float] = (9, 3.6)
    # The pattern's probe on a run's summary: None when it holds, else what failed. `smoke` are the
    # overrides of a seconds-long run on embedded data ({tmp} is a scratch folder).
    check: Check | None = None
    smoke: tuple[str, ...] = ()
    limits: str = ""  # where the default config was measured to stop working, for --help
    report: tuple[str, ...] = ()  # the summary's keys the command line prints at the end
    # Where it stands in the gallery's listings (README, site, hero), smallest first; ties by name.
    order: int = 100
    # Its learning gate, and any more gates, each named f"{name}_{key}" in docs/gates.json.
    gate: Gate | None = None
    more_gates: dict[str, Gate] = field(default_factory=dict)
    # What its measurements say, from its gate's entry in docs/gates.json and from docs/bench.json.
    measured: MeasuredFrom | None = None
    # The keys that set how much memory a step takes: out of memory names them, with their values.
    size_keys: tuple[str, ...] = ("batch_size",)
    # The step sizes to lower when a run diverges: the line that says so names them, with values.
    lr_keys: tuple[str, ...] = ("lr",)

    def __post_init__(self) -> None:
        for field_name, protocol in (("headline", Headline), ("check", Check),
                                     ("figure", TourFigure), ("measured", MeasuredFrom)):
            require_callable_as(f"{self.name}'s EXAMPLE", field_name, getattr(self, field_name),
                                protocol)

    @property
    def groups(self) -> dict[str, str]:
        """Its config groups and their options, read from its configs folder (what `--help`
        lists): {"env": "acrobot, cartpole"}."""
        folder = config_root() / self.name
        found = {d.name: ", ".join(sorted(f.stem for f in d.glob("*.yaml")))
                 for d in sorted(folder.iterdir()) if d.is_dir()}
        return {group: options for group, options in found.items() if options}

    @property
    def module(self):
        return importlib.import_module(f"gallery.{self.name}")

    def smoke_overrides(self, tmp: str | Path) -> list[str]:
        """The smoke run's overrides, with `tmp` as its scratch folder."""
        return [o.replace("{tmp}", str(tmp)) for o in self.smoke]

    def describe(self) -> str:
        lines = [f"{self.name}: {self.pattern}", "",
                 "mistake= choices (default: none, the pattern):"]
        for key, mistake in self.mistakes.items():
            lines.append(f"  {key}: {mistake.description}")
            lines.append(f"  {' ' * len(key)}  -> {mistake.consequence}")
        if self.limits:
            lines += ["", "Limits of the default config:", *textwrap.wrap(
                self.limits, 98, initial_indent="  ", subsequent_indent="  ")]
        return "\n".join(lines)

    def source(self, name: str) -> str:
        return inspect.getsource(getattr(self.module, name))

    def replaced(self, variant: str) -> str:
        """The pattern function a mistake variant stands in for: the longest pattern name it starts
        with."""
        matches = [p for p in self.pattern_functions if variant.startswith(p)]
        if not matches:
            raise ValueError(f"{self.name}.{variant} does not name the pattern function it "
                             "replaces")
        return max(matches, key=len)

    def diff(self, variant: str) -> list[str]:
        """The unified diff from the mistake variant to the pattern function: the fix, so that
        the mistake's lines are the removed ones (red wherever diffs are coloured, as the mistake
        is in every figure) and the pattern's the added ones. Docstrings and `# PATTERN:` labels
        are left out and the variant takes the pattern's name, so only the real change shows."""
        original = self.replaced(variant)
        pattern = _code_lines(self.source(original))
        mistake = _code_lines(self.source(variant).replace(variant, original, 1))
        return list(difflib.unified_diff(mistake, pattern, f"{variant} (mistake)",
                                         f"{original} (pattern)", lineterm="", n=2))

    def show(self) -> str:
        """The pattern functions, then each mistake as a diff against the function it replaces."""
        lines = [f"# {self.name}: {self.pattern}", "", "## the pattern", ""]
        for name in self.pattern_functions:
            lines += [self.source(name).rstrip(), ""]
        gate = _gate_entry(self.name)
        for key, mistake in self.mistakes.items():
            lines += [f"## mistake={key}: {mistake.description}",
                      f"## consequence: {mistake.consequence}",
                      *(f"## {line}" for line in measured_against_pattern(gate, key)), ""]
            for variant in mistake.variants:
                lines += [*self.diff(variant), ""]
        return "\n".join(lines)


def _gate_entry(name: str) -> dict:
    """The example's entry in docs/gates.json, in a checkout (an installed wheel has no docs)."""
    path = Path(gallery.__file__).resolve().parents[1] / "docs" / "gates.json"
    return json.loads(path.read_text()).get(name, {}) if path.is_file() else {}


def measured_against_pattern(gate: dict, mistake: str, limit: int = 6) -> list[str]:
    """Where a gate ran a mistake beside the pattern (groups named after them), what it measured:
    each kept value the two differ in, as the pattern's mean -> the mistake's over the seeds."""
    runs = gate.get("runs", {})
    if not isinstance(runs, dict) or mistake not in runs or "none" not in runs:
        return []
    pattern, theirs = runs["none"], runs[mistake]
    lines = []
    for key in pattern[0]:
        values = [[row.get(key) for row in rows] for rows in (pattern, theirs)]
        if key in ("wall_seconds", "steps_per_sec") or not all(
                isinstance(v, (int, float)) for group in values for v in group):
            continue
        means = [mean(float(v) for v in group) for group in values]
        if abs(means[0] - means[1]) > 1e-3 * max(abs(means[0]), abs(means[1])):  # not rounding
            lines.append(f"{key}: {_shown(means[0])} -> {_shown(means[1])}")
    if not lines:
        return []
    return [f"measured (docs/gates.json, pattern -> mistake, mean of {len(theirs)} seeds):",
            *(f"  {line}" for line in lines[:limit])]


def _shown(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 or value == int(value) else f"{value:.4g}"


def _code_lines(source: str) -> list[str]:
    lines = source.splitlines()
    tree = ast.parse(textwrap.dedent(source))
    body = tree.body[0].body if tree.body and hasattr(tree.body[0], "body") else []
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
        start, end = body[0].lineno - 1, body[0].end_lineno
        # and the blank line after a class docstring
        if end < len(lines) and not lines[end].strip():
            end += 1
        del lines[start:end]
    return [re.sub(r"\s+# PATTERN:.*$", "", line) for line in lines]


def changed_lines(diff: list[str]) -> int:
    """Lines a diff removes or adds (its headers aside)."""
    return sum(1 for line in diff[2:] if line[:1] in "+-")


def examples() -> dict[str, Example]:
    """Every example, in the gallery's order (each one's `order`, then its name): a module of the
    gallery package with a primary config of its own, configs/<name>/<name>.yaml, that declares an
    `EXAMPLE` (tests/test_registry.py names a module with the one and not the other)."""
    found: dict[str, Example] = {}
    for info in sorted(pkgutil.iter_modules(gallery.__path__), key=lambda m: m.name):
        if info.ispkg or not (config_root() / info.name / f"{info.name}.yaml").is_file():
            continue
        module = importlib.import_module(f"gallery.{info.name}")
        example = getattr(module, "EXAMPLE", None)
        if isinstance(example, Example):
            found[example.name] = example
    return dict(sorted(found.items(), key=lambda item: (item[1].order, item[0])))
