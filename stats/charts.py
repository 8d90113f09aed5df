"""The status page's charts, drawn on the server as SVG by pygal.

pygal: a maintained pure-Python library made for exactly this (SVG line and bar charts, no
browser code): the page needs no chart script, works without JavaScript, and the charts are
plain markup a test can read. Its tooltip script would come from a CDN, so it is left out
(`js=[]`), and so is the settings blob pygal writes for it into every chart (`_bare`): the
numbers are in the page's text anyway.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pygal
from pygal.style import Style

STYLE = Style(
    background="transparent",
    plot_background="transparent",
    foreground="#333",
    foreground_strong="#222",
    foreground_subtle="#ccc",
    opacity=".35",
    opacity_hover=".5",
    colors=("#2f6fd6", "#d9822b", "#2a9d5c", "#9b59b6"),
    font_family="system-ui, sans-serif",
    label_font_size=13,
    major_label_font_size=13,
    value_font_size=13,
    title_font_size=16,
    legend_font_size=13,
)


_SCRIPTS_AND_COMMENTS = re.compile(r"<script\b.*?</script>|<!--.*?-->", re.S)
_TOOLTIP_POSITIONS = re.compile(r'<desc class="[xy] [^"]*">[^<]*</desc>')
_TOOLTIP_VALUE = re.compile(r'<desc class="value">([^<]*)</desc>')
_LONG_DECIMALS = re.compile(r"(\d\.\d)\d+")


def _bare(svg: str) -> str:
    """The chart without what only pygal's tooltip script would use, in a third of the bytes.

    Its settings script, comments and tooltip positions go; each point's value becomes an SVG
    `<title>`, which browsers show on hover by themselves; coordinates keep one decimal.
    """
    svg = _TOOLTIP_POSITIONS.sub("", _SCRIPTS_AND_COMMENTS.sub("", svg))
    return _LONG_DECIMALS.sub(r"\1", _TOOLTIP_VALUE.sub(r"<title>\1</title>", svg))


def _config(**options: object) -> pygal.Config:
    config = pygal.Config(
        style=STYLE,
        js=[],  # no tooltip script from a CDN
        disable_xml_declaration=True,
        explicit_size=False,  # scales with the page (viewBox only)
        width=720,
        height=260,
        show_legend=False,
        margin=8,
        print_values=False,
        show_dots=False,
        include_x_axis=True,
    )
    for name, value in options.items():
        setattr(config, name, value)
    return config


def _time_axis(chart: pygal.DateTimeLine, points: list[tuple[datetime, object]]) -> None:
    """Labels on the whole hours divisible by 3 (UTC) within the points' span."""
    chart.x_value_formatter = lambda moment: moment.strftime("%H:%M")
    if points:
        first, last = points[0][0], points[-1][0]
        hour = first.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        hour += timedelta(hours=(3 - hour.hour % 3) % 3)
        labels = []
        while hour <= last:
            labels.append(hour)
            hour += timedelta(hours=3)
        chart.x_labels = labels


def compact(value: float) -> str:
    """1.2 M, 441 k, 76: short enough for an axis."""
    for size, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def generations_per_minute(points: list[tuple[datetime, int]]) -> str:
    chart = pygal.DateTimeLine(
        _config(fill=True, title="Generations per minute (5-minute average), last 24 h")
    )
    _time_axis(chart, points)
    chart.add("generations", points)
    return _bare(chart.render(is_unicode=True))


def median_waits(points: list[tuple[datetime, float | None]]) -> str:
    chart = pygal.DateTimeLine(
        _config(
            title="Median wait for a first job (s), per 10 minutes",
            allow_interruptions=True,
            show_dots=True,
            dots_size=2,
        )
    )
    _time_axis(chart, points)
    chart.add("median wait", points)
    return _bare(chart.render(is_unicode=True))


def bars(title: str, rows: list[tuple[str, int]]) -> str:
    """Horizontal bars, one per row (label, value), the largest first."""
    chart = pygal.HorizontalBar(
        _config(title=title, height=max(120, 40 + 28 * len(rows)), print_values=True)
    )
    chart.value_formatter = compact
    for label, value in reversed(rows):
        chart.add(label, [value])
    chart.show_legend = True
    chart.legend_at_bottom = False
    return _bare(chart.render(is_unicode=True))
