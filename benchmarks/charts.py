"""Draw the charts of docs/benchmarks.md from the figures kept beside them.

    .venv/bin/python benchmarks/charts.py [--figures docs/benchmarks/figures.json]
                                          [--out docs/benchmarks]

Each entry of figures.json is one table of docs/benchmarks.md. Its chart has one panel per
measurement (their units differ), with horizontal bars grouped by category and a colour per
series; a value `[low, high]` (a range over runs) is a bar from low to high, and a dashed line
marks a target. A figure changes in figures.json and in the table together; then run this and
commit the PNGs. The PNGs carry no timestamp or version, so an unchanged figure draws the same
file.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any, TypedDict, cast

import matplotlib

matplotlib.use("Agg")  # files only: no display, whatever the machine has

import matplotlib.pyplot as plt  # after the backend is chosen
from matplotlib.axes import Axes

REPO = Path(__file__).resolve().parent.parent
FIGURES = REPO / "docs" / "benchmarks" / "figures.json"
OUT = REPO / "docs" / "benchmarks"

WIDTH_INCHES = 10.0
BAR_INCHES = 0.32  # height of one bar
PANEL_INCHES = 0.95  # a panel's title, axis and margins
TITLE_INCHES = 0.7
DPI = 110
LABEL_WIDTH = 30  # characters of a category's label per line
LINE_COLOUR = "0.25"
EN_DASH = "\u2013"  # between the ends of a range, as the tables write it

Value = float | list[float] | None  # a figure, a [low, high] range over runs, or none


class Line(TypedDict):
    label: str
    value: float


class Series(TypedDict):
    label: str
    values: list[Value]


class _PanelRequired(TypedDict):
    title: str
    unit: str
    better: str  # "lower" or "higher"
    categories: list[str]
    series: list[Series]


class Panel(_PanelRequired, total=False):
    lines: list[Line]
    log: bool


class Chart(TypedDict):
    file: str
    title: str
    subtitle: str
    panels: list[Panel]


def load(path: Path) -> list[Chart]:
    """The charts of a figures file, checked enough that a typo fails here, not in a plot."""
    charts = cast(list[Chart], json.loads(path.read_text())["charts"])
    for chart in charts:
        assert chart["file"].endswith(".png"), chart["file"]
        for panel in chart["panels"]:
            assert panel["better"] in ("lower", "higher"), panel["title"]
            for series in panel["series"]:
                assert len(series["values"]) == len(panel["categories"]), (
                    f"{chart['file']}: {panel['title']}: {series['label']!r} has "
                    f"{len(series['values'])} values for {len(panel['categories'])} categories"
                )
    return charts


def number(value: float) -> str:
    """A figure as the tables write it: thousands separated, decimals as written in the
    figures (json gives 7.0 as a float and 67 as an int)."""
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return repr(value)


def extent(value: Value) -> tuple[float, float] | None:
    """Where a value's bar starts and ends."""
    if value is None:
        return None
    if isinstance(value, list):
        low, high = value
        return low, high
    return 0, value


def draw_panel(axes: Axes, panel: Panel) -> None:
    categories, series = panel["categories"], panel["series"]
    log = panel.get("log", False)
    height = 0.8 / len(series)
    largest = max(
        [end for s in series for v in s["values"] if (e := extent(v)) for end in e]
        + [line["value"] for line in panel.get("lines", [])]
    )
    for index, one in enumerate(series):
        offset = (index - (len(series) - 1) / 2) * height
        colour = f"C{index}"
        for row, value in enumerate(one["values"]):
            y = row + offset
            span = extent(value)
            if span is None:
                axes.text(0, y, " none recorded", va="center", fontsize=8, color="0.4")
                continue
            start, end = span
            ranged = isinstance(value, list)
            if log and not ranged:
                start = 1.0  # a log axis has no 0: bars start at 1
            axes.barh(
                y,
                end - start,
                left=start,
                height=height * 0.92,
                color=colour,
                alpha=0.55 if ranged else 1.0,
                edgecolor=colour,
                label=one["label"] if row == 0 and one["label"] else None,
            )
            text = f"{number(start)}{EN_DASH}{number(end)}" if ranged else number(end)
            axes.text(end, y, f" {text}", va="center", fontsize=8)
    for line in panel.get("lines", []):
        axes.axvline(line["value"], color=LINE_COLOUR, linestyle="--", linewidth=1.2)
        axes.plot([], [], color=LINE_COLOUR, linestyle="--", label=line["label"])
    axes.set_yticks(range(len(categories)))
    axes.set_yticklabels([textwrap.fill(c, LABEL_WIDTH) for c in categories], fontsize=9)
    axes.invert_yaxis()  # the first category on top, as in the table
    axes.set_title(panel["title"], fontsize=10, loc="left")
    axes.set_xlabel(f"{panel['unit']} ({panel['better']} is better)", fontsize=9)
    axes.tick_params(axis="x", labelsize=8)
    axes.grid(axis="x", color="0.9")
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    if log:
        axes.set_xscale("log")
        axes.set_xlim(1, largest * 8)  # room for the labels at the bars' ends
    else:
        axes.set_xlim(0, largest * 1.2)
    if any(s["label"] for s in series) or panel.get("lines"):
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def draw(chart: Chart, out: Path) -> Path:
    panels = chart["panels"]
    heights = [
        len(p["categories"]) * max(1, len(p["series"])) * BAR_INCHES + PANEL_INCHES for p in panels
    ]
    figure, axes_list = plt.subplots(
        len(panels),
        1,
        figsize=(WIDTH_INCHES, sum(heights) + TITLE_INCHES),
        gridspec_kw={"height_ratios": heights},
        layout="constrained",
        squeeze=False,
    )
    figure.suptitle(f"{chart['title']}\n{chart['subtitle']}", fontsize=10.5, x=0.01, ha="left")
    for axes, panel in zip(axes_list[:, 0], panels, strict=True):
        draw_panel(axes, panel)
    path = out / chart["file"]
    # No "Software" entry: the same figures give the same bytes with any matplotlib.
    metadata: dict[str, Any] = {"Software": None}
    figure.savefig(path, dpi=DPI, metadata=metadata)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", type=Path, default=FIGURES, help="the figures (JSON)")
    parser.add_argument("--out", type=Path, default=OUT, help="where the PNGs go")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for chart in load(args.figures):
        print(draw(chart, args.out).relative_to(REPO) if args.out == OUT else chart["file"])


if __name__ == "__main__":
    main()
