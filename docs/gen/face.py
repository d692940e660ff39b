"""The top of each example page: its module docstring as prose (the sketch as a code block), then
each mistake with what it was measured to cost. The words come from the example's own docstring and
`EXAMPLE`; every number from docs/gates.json and docs/bench.json, through the example's
`EXAMPLE.measured` or the rows its gate's criteria read. Its formats of a value and of a cost ratio
are the ones the hero and the performance page use too, so a number reads the same everywhere."""

from __future__ import annotations

import re
from statistics import mean

MEASURED = '<span class="measured">{}</span>'  # the browser test finds the first screen's figures
PATTERN = '<span class="measured pattern">{}</span>'


def docstring_parts(doc: str, mistakes) -> tuple[list[str], dict[str, str], list[str]]:
    """The docstring as Markdown without its list of mistakes and its run lines; each mistake's
    words from that list; the run lines."""
    lines = doc.strip().splitlines()
    words: dict[str, str] = {}
    notes: dict[str, str] = {}
    kept: list[str] = []
    run: list[str] = []
    current = None
    for line in lines:
        bullet = re.match(r"- (\w+)( \([^)]*\))?: (.*)", line)  # "- name (a note): words"
        if bullet and bullet.group(1) in mistakes:
            current = bullet.group(1)
            words[current] = bullet.group(3)
            notes[current] = bullet.group(2) or ""  # said after the words
            continue
        if current and line.startswith("  ") and line.strip():  # the bullet goes on
            words[current] += " " + line.strip()
            continue
        current = None
        if line.startswith("Run: ") or (run and line.startswith(" ") and line.strip()):
            run.append(line.removeprefix("Run: ").strip())
            continue
        if re.match(r"The mistakes \(`mistake=`\)", line):
            continue
        kept.append(line)
    return fenced(kept), {k: text + notes[k] for k, text in words.items()}, run


def fenced(lines: list[str]) -> list[str]:
    """Markdown of docstring lines: each block indented by four spaces becomes a fenced Python
    block (the sketch), other paragraphs stay prose; runs of blank lines fold into one."""
    out: list[str] = []
    block: list[str] = []
    for line in [*lines, ""]:
        if line.startswith("    "):
            block.append(line[4:])
            continue
        if block and not line.strip() and block[-1:] != [""]:
            block.append("")  # a blank line inside the sketch is kept, unless it ends it
            continue
        if block:
            while block and not block[-1].strip():
                block.pop()
            out += ["```python", *block, "```", ""]
            block = []
        if line.strip() or (out and out[-1].strip()):
            out.append(line)
    return out


def timed_alongside(key: str) -> bool:
    """A gate's wall times: taken with other runs going alongside (Hydra sweeps two jobs at once,
    the first run pretrains what the others read from the cache), so docs/gates.json keeps them for
    the gates' time bounds and the site shows none of them."""
    return "wall" in key


def shown(key: str, value: float) -> str:
    """A kept value as a reader says it, on every page and in the hero: bytes in B, KiB, MiB or
    GiB; other values in 3 figures."""
    if "bytes" in key:
        for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if abs(value) >= size:
                return f"{figures3(value / size)} {unit}"
        return f"{value:.0f} B"
    if float(value).is_integer():
        return f"{value:,.0f}"
    return figures3(value)


def figures3(value: float) -> str:
    """Three significant figures, never in exponent form above 1."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


class _Reading(dict):
    """A row that remembers which of its keys a criterion's predicate read."""

    def __init__(self, row: dict, seen: set):
        super().__init__(row)
        self._seen = seen

    def __getitem__(self, key):
        self._seen.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._seen.add(key)
        return super().get(key, default)


def keys_read(criterion, runs: dict) -> dict[str, set]:
    """group -> the keys of its rows that a criterion's predicate reads to decide."""
    seen: dict[str, set] = {group: set() for group in criterion.reads}
    try:
        criterion.holds(*([_Reading(row, seen[group]) for row in runs[group]]
                          for group in criterion.reads))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        pass  # a row without the key: what it read so far still says where it looks
    return seen


def from_criteria(example, entry: dict, mistake: str, limit: int = 2) -> list[str]:
    """"key: pattern -> mistake" for the keys the gate's criteria read of this mistake's runs,
    each against the pattern's runs with the same overrides (means over seeds)."""
    gate = example.gate
    runs = entry.get("runs", {}) if isinstance(entry, dict) else {}
    if gate is None or not isinstance(runs, dict):
        return []
    found: list[str] = []
    for label, spec in gate.runs.items():
        if spec.mistake != mistake or label not in runs:
            continue
        twin = next((other for other, s in gate.runs.items() if s.mistake == "none"
                     and s.overrides == spec.overrides and other in runs), None)
        for criterion in gate.criteria:
            if label not in criterion.reads or criterion.timed:
                continue
            for key in sorted(k for k in keys_read(criterion, runs)[label]
                              if not timed_alongside(k)):
                theirs = averaged(key, [row.get(key) for row in runs[label]])
                ours = averaged(key, [row.get(key) for row in runs[twin]]) if twin else None
                said = key.replace("_", " ")
                if theirs is None or theirs == ours:  # the same as the pattern's: no cost
                    continue
                text = f"{said} {ours} → {theirs}" if ours is not None else f"{said} {theirs}"
                if text not in found:
                    found.append(text)
    return found[:limit]


def averaged(key: str, values: list) -> str | None:
    """The mean over seeds as shown: of flags (true, false, or on how many seeds), of numbers, or
    of lists of numbers position by position."""
    if values and all(isinstance(v, bool) for v in values):
        held = sum(values)
        return "true" if held == len(values) else "false" if not held else \
            f"true on {held} of {len(values)} seeds"
    if values and all(isinstance(v, (int, float)) for v in values):
        return shown(key, mean(float(v) for v in values))
    if values and all(isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v)
                      for v in values) and len({len(v) for v in values}) == 1:
        return ", ".join(shown(key, mean(float(v[i]) for v in values))
                         for i in range(len(values[0])))
    return None


def ratio(value: float) -> str:
    """A cost ratio (the mistake's over the pattern's) as every page says it; infinite where the
    pattern holds none of what the mistake holds."""
    return "held where the pattern holds none" if value == float("inf") else f"{value:.2f}x"


def cost_words(cost) -> list[str]:
    words = []
    if cost.time is not None:
        words.append(f"{ratio(cost.time)} the pattern's time")
    if cost.bytes is not None:
        words.append(f"{ratio(cost.bytes)} the bytes held for backward"
                     if cost.bytes != float("inf") else "bytes held for backward where the "
                     "pattern holds none")
    return words


def mistake_figures(example, entry: dict, measured) -> dict[str, list[str]]:
    """mistake -> what it was measured to cost, each phrase with its number: the gate's rows that
    its criteria read (pattern -> mistake), else the README's words for it or the hero panel; and
    the costliest mistake's ratios of time and bytes."""
    said: dict[str, list[str]] = {m: [] for m in example.mistakes}
    if measured is not None:  # the README's words first: the home page's row says the same
        for mistake, phrase in readme_phrases(measured):
            if mistake in said:
                said[mistake].append(phrase)
        panel = measured.hero
        name = panel.mistake_label.split(" ")[0]
        if name in said and not said[name]:
            said[name].append(f"{panel.metric} {shown(panel.metric, panel.pattern)} → "
                              f"{shown(panel.metric, panel.mistake)}")
    for mistake, phrases in said.items():  # else the rows its gate's criteria read
        if not phrases:
            phrases += from_criteria(example, entry, mistake)
    if measured is not None:
        costly = said.get(measured.cost.mistake)
        if costly is not None and not re.search(r"\dx\b", " ".join(costly)):  # not said yet
            costly += cost_words(measured.cost)
    return said


def readme_phrases(measured) -> list[tuple[str, str]]:
    """(mistake, what it measured) for each phrase of the README's mistake column that names a
    mistake ("no_freeze: 2.7x the time, ...")."""
    found = []
    for phrase in measured.readme[1].split("; "):
        name = re.match(r"(\w+)(: | \()", phrase)
        if name:
            found.append((name.group(1), phrase[len(name.group(1)):].lstrip(": ")))
    return found


def mistakes_list(example, words: dict[str, str], figures: dict[str, list[str]],
                  measured=None) -> list[str]:
    """The first screen's list: what the pattern measured, then each mistake, what it was measured
    to cost, and its consequence in words."""
    lines = ["## What each mistake costs", ""]
    if measured is not None:
        lines += [f"The pattern: {PATTERN.format(measured.readme[0])}.", ""]
    for key, mistake in example.mistakes.items():
        numbers = figures.get(key) or []
        cost = (MEASURED.format("; ".join(numbers)) + ". " if numbers
                else "Not measured by a gate. ")
        said = words.get(key) or mistake.consequence + "."
        lines.append(f"- **`{key}`**: {cost}{said[:1].upper() + said[1:]}")
    return [*lines, ""]


COMMAND = re.compile(r"(python|torchrun|scripts/|bash) ")


def run_block(run: list[str]) -> list[str]:
    """The docstring's run lines as a shell block: each command on its line, a note in
    parentheses (and the lines that go on with it) as comments above it."""
    lines: list[str] = []
    for line in run:
        if COMMAND.match(line):
            command, _, note = line.partition("  (")
            lines += [f"# ({note.strip()}"] if note else []
            lines.append(command.strip())
        else:  # a note that goes on: it belongs above the command it follows
            at = max(i for i, x in enumerate(lines) if not x.startswith("#"))
            lines.insert(at, f"#  {line}")
    return ["```bash", *lines, "```", ""] if lines else []
