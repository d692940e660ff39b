"""gallery/core/plots.py's `readable`, which every saved figure goes through: a figure reads at
about 850 px, the pattern green beneath its runs, each other run warm and dashed."""

from __future__ import annotations

from PIL import Image

from gallery.core import plots


def test_a_wide_row_of_panels_wraps_to_the_page_with_the_legend_in_the_spare_cell(tmp_path):
    fig = plots.pyplot().figure(figsize=(12, 3.6))
    axes = [fig.add_subplot(1, 3, i) for i in (1, 2, 3)]
    for label, ys in (("pattern", [1, 2, 3]), ("reference_with_grad", [1, 2, 3]),
                      ("reference_is_policy", [1, 3, 3])):
        for ax in axes:
            ax.plot([1, 2, 3], ys, label=label)
    axes[0].legend(fontsize=6)
    path = plots.save(fig, tmp_path / "wide.png")
    assert Image.open(path).size == (850, 720)  # 8.5 in: two rows of two
    pattern, same, other = axes[1].get_lines()
    assert pattern.get_color() == plots.PATTERN_COLOUR and pattern.get_linewidth() > 3
    assert pattern.get_zorder() < same.get_zorder()  # a run on the pattern stays in sight
    assert same.get_linestyle() == "--" and same.get_color() == plots.MISTAKE_COLOURS[0]
    assert other.get_color() == plots.MISTAKE_COLOURS[1]
    assert axes[0].get_legend() is None and len(fig.axes) == 4  # the legend moved to the spare
    assert fig.axes[3].get_legend() is not None


def test_a_figure_without_a_pattern_keeps_its_colours_and_a_narrow_one_its_size(tmp_path):
    fig = plots.pyplot().figure(figsize=(5, 3))
    ax = fig.add_subplot(1, 1, 1)
    (line,) = ax.plot([0, 1], [0, 1], color="tab:blue", label="mistake=none")
    path = plots.save(fig, tmp_path / "narrow.png")
    assert Image.open(path).size == (500, 300) and line.get_color() == "tab:blue"
