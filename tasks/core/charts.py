"""Volume charts for the Prefect UI: each series' history, its expected band and its alerts.

The Prefect UI renders a markdown artifact with its own renderer: images become ``<img>``
elements (so an SVG passed as a ``data:image/svg+xml;base64`` URI draws, and cannot run
anything), tables become its table component, raw HTML is not trusted. Each series therefore
gets an SVG image *and* a one-line unicode sparkline in a table, which shows even where images
are blocked (e.g. a copy of the markdown pasted elsewhere).

Everything here is pure: polars frames in, strings out; no IO, no Prefect.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import polars as pl

SPARK_BARS = "▁▂▃▄▅▆▇█"
WIDTH, HEIGHT, PAD = 480, 120, 8
MAX_POINTS = 48  # the newest points of each series drawn (older ones are summarised away)
ALERT_COLOURS = {"warning": "#d97706", "error": "#dc2626"}


@dataclass(frozen=True)
class SeriesChart:
    """One series to draw: its points, oldest first, and the band its newest point was judged by.

    ``alerts`` maps the index of a point in ``rows`` to the severity it alerted with.
    ``lower``/``upper`` are None when that direction never alerts (or history is too short).
    """

    label: str
    rows: tuple[int, ...]
    lower: float | None
    upper: float | None
    expected: float | None
    severity: str
    alerts: dict[int, str]


def sparkline(values: Sequence[float]) -> str:
    """One unicode bar per value, scaled between the smallest and largest value.

    >>> sparkline([0, 5, 10])
    '▁▅█'
    """
    if not values:
        return ""
    low, high = min(values), max(values)
    top = len(SPARK_BARS) - 1
    if high == low:  # a steady series: full bars when it has rows, the floor when it has none
        return SPARK_BARS[top if high > 0 else 0] * len(values)
    return "".join(SPARK_BARS[round((v - low) / (high - low) * top)] for v in values)


def series_charts(
    history: pl.DataFrame, checks: pl.DataFrame, alerts: pl.DataFrame | None = None
) -> list[SeriesChart]:
    """Pair each judged series with its history and the points that alerted.

    Args:
        history: ``ops/volume_metrics`` rows (``run_id, measured_at, table, source, segment,
            rows``).
        checks: one row per series' newest point with ``expected, lower, upper, severity``
            (the detector's output, see :func:`tasks.core.anomaly.score_volumes`).
        alerts: ``ops/volume_alerts`` rows (``run_id, table, source, segment, severity``), or
            None; the newest point's own severity comes from ``checks``.
    """
    keys = ["table", "source", "segment"]
    alerted: dict[tuple[str | None, ...], dict[str, str]] = {}
    if alerts is not None and alerts.height:
        for a in alerts.select(*keys, "run_id", "severity").iter_rows(named=True):
            alerted.setdefault(tuple(a[k] for k in keys), {})[a["run_id"]] = a["severity"]
    charts = []
    for check in checks.sort(keys, nulls_last=False).iter_rows(named=True):
        key = tuple(check[k] for k in keys)
        points = (
            history.filter(
                *[pl.col(k).is_null() if check[k] is None else pl.col(k) == check[k] for k in keys]
            )
            .sort("measured_at", "run_id")
            .tail(MAX_POINTS)
        )
        run_ids = points["run_id"].to_list()
        by_run = alerted.get(key, {})
        marks = {i: by_run[r] for i, r in enumerate(run_ids) if r in by_run}
        if check["severity"] in ALERT_COLOURS and run_ids:
            marks[len(run_ids) - 1] = check["severity"]
        charts.append(
            SeriesChart(
                label=series_label(check["table"], check["source"], check["segment"]),
                rows=tuple(int(r) for r in points["rows"].to_list()),
                lower=check["lower"],
                upper=check["upper"],
                expected=check["expected"],
                severity=check["severity"],
                alerts=marks,
            )
        )
    return charts


def series_label(table: str, source: str | None, segment: str | None) -> str:
    """e.g. ``bronze/orders source=orders`` or ``gold/audience_members segment=champions``."""
    parts = [table]
    if source:
        parts.append(f"source={source}")
    if segment:
        parts.append(f"segment={segment}")
    return " ".join(parts)


def volume_svg(chart: SeriesChart) -> str:
    """An SVG line of the series' counts over the expected band, alerting points in colour."""
    band = [b for b in (chart.lower, chart.upper) if b is not None and math.isfinite(b)]
    values = [float(v) for v in chart.rows]
    low = min([*values, *band, 0.0])
    high = max([*values, *band, 1.0])
    span = high - low or 1.0

    def y(v: float) -> float:
        return round(HEIGHT - PAD - (v - low) / span * (HEIGHT - 2 * PAD), 1)

    def x(i: int) -> float:
        steps = max(len(values) - 1, 1)
        return round(PAD + i / steps * (WIDTH - 2 * PAD), 1)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}">',
        f"<title>{escape(chart.label)}</title>",
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
    ]
    if band:
        top = y(chart.upper if chart.upper is not None else high)
        bottom = y(chart.lower if chart.lower is not None else low)
        parts.append(
            f'<rect x="{PAD}" y="{top}" width="{WIDTH - 2 * PAD}" '
            f'height="{round(max(bottom - top, 1.0), 1)}" fill="#16a34a" fill-opacity="0.15"/>'
        )
    if chart.expected is not None and math.isfinite(chart.expected):
        ey = y(chart.expected)
        parts.append(
            f'<line x1="{PAD}" y1="{ey}" x2="{WIDTH - PAD}" y2="{ey}" stroke="#16a34a" '
            'stroke-dasharray="4 3"/>'
        )
    if values:
        line = " ".join(f"{x(i)},{y(v)}" for i, v in enumerate(values))
        parts.append(f'<polyline points="{line}" fill="none" stroke="#2563eb" stroke-width="2"/>')
    for i, severity in sorted(chart.alerts.items()):
        if 0 <= i < len(values):
            parts.append(
                f'<circle cx="{x(i)}" cy="{y(values[i])}" r="4" '
                f'fill="{ALERT_COLOURS.get(severity, "#dc2626")}"/>'
            )
    parts.append("</svg>")
    return "".join(parts)


def svg_data_uri(svg: str) -> str:
    """``data:image/svg+xml;base64,...``: a URI a markdown image can point at."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode("ascii")


def _number(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:,.0f}"


def render_volume_charts(charts: Sequence[SeriesChart], *, run_id: str) -> str:
    """Markdown for the run page: a table of sparklines, then one chart per series."""
    lines = [
        f"# Volume per series, run `{run_id}`",
        "",
        "Blue: rows per run (newest right); green band: the counts that would not alert for the "
        "newest point (dashed: expected); orange/red dots: warnings/errors.",
        "",
        "| series | history | newest | expected | band | verdict |",
        "|---|---|---:|---:|---|---|",
    ]
    for c in charts:
        newest = c.rows[-1] if c.rows else None
        verdict = f"**{c.severity}**" if c.severity in ALERT_COLOURS else c.severity
        lines.append(
            f"| {c.label} | {sparkline(c.rows)} | {_number(newest)} | {_number(c.expected)} "
            f"| {_number(c.lower)} .. {_number(c.upper)} | {verdict} |"
        )
    if not charts:
        lines.append("| (no volume metrics yet) | | | | | |")
    for c in charts:
        lines += ["", f"### {c.label}", "", f"![{c.label}]({svg_data_uri(volume_svg(c))})"]
    return "\n".join(lines) + "\n"
