"""The documentation site: it builds with `mkdocs build --strict`, each example page's code is its
source, and no hand-written page types a measured figure (those are rendered from the JSON
files)."""

from __future__ import annotations

import html
import inspect
import re
import sys
from pathlib import Path

import pytest

from gallery.core.registry import examples
from tests.conftest import ROOT

# A number with a unit of time, size, share, ratio or rate: a measured figure.
FIGURE = re.compile(r"\b\d[\d,]*(\.\d+)?\s?(s|ms|%|KB|MB|GB|x|steps/s|chars/s)(?![\w/])")


# The site is built once per test process (tests/conftest.py's `site`), and this file and the
# browser test share a process.
pytestmark = pytest.mark.xdist_group("site")


def code_blocks(page: Path) -> list[str]:
    blocks = re.findall(r"<pre><span></span><code>(.*?)</code></pre>", page.read_text(), flags=re.S)
    return [tidy(html.unescape(re.sub(r"<[^>]+>", "", block))) for block in blocks]


def tidy(text: str) -> str:
    """Markdown drops trailing spaces (a diff's blank context line is one space): compare without
    them."""
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


@pytest.mark.parametrize("name", sorted(examples()))
def test_each_example_page_shows_its_pattern_functions_exactly_as_the_source_has_them(site, name):
    example = examples()[name]
    shown = code_blocks(site / "examples" / name / "index.html")
    for function in example.pattern_functions:
        source = tidy(inspect.getsource(getattr(example.module, function)))
        assert source in shown, f"the {name} page's {function} is not its source"
    # and each mistake as the diff `gallery show` prints
    for key, mistake in example.mistakes.items():
        for variant in mistake.variants:
            assert tidy("\n".join(example.diff(variant))) in shown, (key, variant)


def test_every_page_is_built_and_the_home_page_links_nothing_broken(site):
    for page in ("index.html", "lessons/index.html", "performance/index.html",
                 "exit-status/index.html", *(f"examples/{name}/index.html" for name in examples())):
        assert (site / page).is_file(), page


def test_no_hand_written_page_types_a_measured_figure():
    """Pages in docs/ are hand-written; generated pages come from docs/gen/pages.py and the JSON
    files. The check can fail: it finds the figure in a line written the old way."""
    assert FIGURE.search("the whole command takes 14.3 s") and FIGURE.search("1.26x on the H200")
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for number, line in enumerate(page.read_text().splitlines(), 1):
            found = FIGURE.search(line)
            assert not found, (f"{page.relative_to(ROOT)}:{number} types a measured figure: "
                               f"{found.group(0)!r}")


def test_the_performance_page_shows_every_figure_of_every_bench_row(site):
    """Each row of a bench was measured in a setting of its own and may carry other figures than
    the first row (the minimal-loop row of `cleanrl`, the bytes row of `sac`): every figure of
    every row of docs/bench.json is on the page, once per row that has it."""
    import json

    page = (site / "performance" / "index.html").read_text()
    cuda = page.find('<h2 id="docsbench_cudajson')  # docs/bench.json's part comes first
    page = page[:cuda] if cuda > 0 else page
    for key, value in json.loads((ROOT / "docs" / "bench.json").read_text()).items():
        if not isinstance(value, list):
            continue
        start = page.index(f'id="{key}"')
        end = page.find("<h3", start)
        section = page[start:end if end > 0 else None]
        figures = [k for row in value for k, v in row.items()
                   if isinstance(v, (int, float, list))]
        for metric in set(figures):
            assert section.count(f"<code>{metric}</code>") == figures.count(metric), (key, metric)


def page_text(page: Path) -> str:
    """A built page's text, whitespace folded: a block's tags part words, an inline tag's not."""
    text = re.sub(r"</?(p|li|td|th|tr|h\d|div|ul|ol|table|thead|tbody|pre|br)\b[^>]*>", " ",
                  page.read_text())
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", text)).split())


def test_each_home_row_says_what_its_example_page_says(site):
    """The home page's row of an example (what the pattern measured, what its mistakes cost) and
    the example page's first screen are one text from one JSON: each phrase of the row is on the
    page, on the line of the mistake it names."""
    sys.path.insert(0, str(ROOT / "docs" / "gen"))
    import face
    import tables

    home = page_text(site / "index.html")
    for name, measured in tables.measurements().items():
        page = page_text(site / "examples" / name / "index.html")
        pattern, mistakes = (" ".join(text.split()) for text in measured.readme)
        assert pattern in home and mistakes in home, name
        assert f"The pattern: {pattern}" in page, name
        for mistake, phrase in face.readme_phrases(measured):
            if mistake in examples()[name].mistakes:
                assert f"{mistake}: {' '.join(phrase.split())}" in page, (name, mistake)


def test_the_two_speed_tables_against_sb3_agree_with_their_rows_and_say_how_they_differ(site):
    """The peers table gives whole processes (the median of pairs in turn), the loop-only table the
    training loops' env steps per second: each ratio on the page is its row's, and the page says
    which is which."""
    import json
    from statistics import median

    page = page_text(site / "performance" / "index.html")
    assert "time whole processes" in page and "start-up left out" in page
    for row in json.loads((ROOT / "docs" / "bench.json").read_text())["sb3"]:
        algorithm = row["setting"].split(":")[0]
        if "gallery_speed_over_sb3" in row:
            assert row["gallery_speed_over_sb3"] == median(row["speed_ratio_per_pair"])
            assert f"{algorithm} Stable-Baselines3 RL Zoo's {row['gallery_speed_over_sb3']:.2f}x" \
                in page, algorithm
            loop = row["gallery_train_env_steps_per_sec"] / row["sb3_learn_env_steps_per_sec"]
            assert abs(loop - row["gallery_train_over_sb3_learn"]) < 1e-9
            assert f"{algorithm} {loop:.2f}x" in page, algorithm
        if "gallery_time_fraction_of_sb3" in row:
            verdict = "met" if row["gallery_time_fraction_of_sb3"] <= row["target_fraction"] \
                else "missed"
            assert f"{row['gallery_time_fraction_of_sb3']:.2f} (at most " \
                f"{row['target_fraction']:.2f}: {verdict})" in page, algorithm
