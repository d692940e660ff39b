"""The built site in a real browser: every page at 900 px wide, in headless Chromium driven by
playwright. Nothing scrolls sideways, no block is wider than its box, no figure is shown wider than
its pixels, and each example page's first screen holds a measured figure. Skipped where there is
no browser: playwright (pip) and the system's Chromium (apt-get install chromium)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gallery.core.registry import examples

pytestmark = pytest.mark.xdist_group("site")  # the site is built once per process (conftest.py)

WIDTH, FIRST_SCREEN = 900, 1200

# What the page shows wider than its box, one line each: the page itself, a code block or table
# (one with its own horizontal scroll bar still counts: at 900 px it hides text), an image.
OVERFLOW = """() => {
  const found = [];
  const root = document.documentElement;
  if (root.scrollWidth > window.innerWidth + 1) {
    found.push(`the page: ${root.scrollWidth} px wide in a ${window.innerWidth} px window`);
  }
  for (const el of document.querySelectorAll('.md-content pre > code, .md-content table')) {
    const box = el.tagName === 'TABLE' ? el.closest('.md-typeset__scrollwrap') || el.parentElement
                                       : el;
    const width = box.clientWidth;
    if (el.scrollWidth > width + 1) {
      const text = (el.innerText || '').trim().split('\\n')[0].slice(0, 60);
      found.push(`${el.tagName.toLowerCase()} "${text}": ${el.scrollWidth} px in ${width} px`);
    }
  }
  for (const img of document.querySelectorAll('.md-content img')) {
    if (img.complete && img.naturalWidth && img.clientWidth > img.naturalWidth + 1) {
      found.push(`${img.getAttribute('src')}: shown ${img.clientWidth} px wide, ` +
                 `drawn ${img.naturalWidth} px`);
    }
  }
  return found;
}"""

FIRST_FIGURE = f"""() => [...document.querySelectorAll('.measured')]
    .filter(el => el.getBoundingClientRect().top < {FIRST_SCREEN} && el.innerText.match(/\\d/))
    .map(el => el.innerText)"""


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="no playwright: pip install "
                                     "playwright")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium: apt-get install chromium")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()


def pages(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("index.html") if "search" not in p.parts)


def test_every_page_reads_at_900_px_and_each_example_opens_on_a_measured_figure(site, browser):
    page = browser.new_page(viewport={"width": WIDTH, "height": FIRST_SCREEN})
    problems, openings = [], {}
    for path in pages(site):
        page.goto(path.as_uri(), wait_until="load")
        page.wait_for_function("() => [...document.images].every(i => i.complete)")
        where = str(path.parent.relative_to(site)) or "home"
        problems += [f"{where}: {found}" for found in page.evaluate(OVERFLOW)]
        if path.parent.parent.name == "examples":
            openings[path.parent.name] = page.evaluate(FIRST_FIGURE)
    assert not problems, "\n".join(problems)
    assert set(openings) == set(examples())
    empty = [name for name, figures in openings.items() if not figures]
    assert not empty, f"these example pages hold no measured figure in their first screen: {empty}"


def test_the_checks_can_fail(site, browser, tmp_path):
    """Each rule finds what it is for, on a page made to break it."""
    wide = tmp_path / "wide.html"
    drawn = Path(site / "img" / "hero.png").as_uri()
    wide.write_text(f"""<html><body><div class="md-content">
        <pre><code style="display:block;overflow:auto;width:300px">{'x' * 400}</code></pre>
        <img src="{drawn}" style="width:5000px">
        <div style="width:3000px">sideways</div></div></body></html>""")
    page = browser.new_page(viewport={"width": WIDTH, "height": FIRST_SCREEN})
    page.goto(wide.as_uri(), wait_until="load")
    found = page.evaluate(OVERFLOW)
    assert any(f.startswith("the page:") for f in found), found
    assert any(f.startswith("pre") or f.startswith("code") for f in found), found
    assert any("drawn" in f for f in found), found
    assert page.evaluate(FIRST_FIGURE) == []
