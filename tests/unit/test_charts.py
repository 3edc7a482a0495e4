"""Volume charts and the pipeline summary: pure renderers of what the Prefect UI shows."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from tasks.core.charts import (
    SeriesChart,
    render_volume_charts,
    series_charts,
    sparkline,
    svg_data_uri,
    volume_svg,
)
from tasks.lineage import destination_asset_key, lake_asset_key
from tasks.reports import IngestReport, PublishReport, SubRun, TableReport, render_pipeline_summary

T0 = datetime(2026, 11, 1, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"


def history(rows: list[int], *, table: str = "bronze/orders", source: str | None = "orders"):
    return pl.DataFrame(
        {
            "run_id": [f"r{i}" for i in range(len(rows))],
            "measured_at": [T0 + timedelta(hours=i) for i in range(len(rows))],
            "table": table,
            "source": source,
            "segment": None,
            "rows": rows,
        },
        schema_overrides={"segment": pl.String, "source": pl.String},
    )


def check(severity: str, *, lower: float | None = 80, upper: float | None = 120, **key):
    return pl.DataFrame(
        [
            {
                "table": key.get("table", "bronze/orders"),
                "source": key.get("source", "orders"),
                "segment": None,
                "expected": 100.0,
                "lower": lower,
                "upper": upper,
                "severity": severity,
            }
        ],
        schema_overrides={"segment": pl.String, "lower": pl.Float64, "upper": pl.Float64},
    )


def test_sparkline_scales_between_min_and_max() -> None:
    assert sparkline([0, 5, 10]) == "▁▅█"
    assert sparkline([7, 7]) == "██"  # steady and non-zero: full bars, not blank
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([]) == ""


def test_series_pairs_history_with_its_band_and_marks_alerts() -> None:
    metrics = pl.concat(
        [history([100, 104, 98, 30]), history([5, 6], table="silver/orders", source=None)]
    )
    checks = pl.concat([check("error"), check("ok", table="silver/orders", source=None)])
    alerts = pl.DataFrame(
        {
            "run_id": ["r1"],
            "table": ["bronze/orders"],
            "source": ["orders"],
            "segment": [None],
            "severity": ["warning"],
        },
        schema_overrides={"segment": pl.String},
    )
    charts = {c.label: c for c in series_charts(metrics, checks, alerts)}
    orders = charts["bronze/orders source=orders"]
    assert orders.rows == (100, 104, 98, 30)
    assert (orders.lower, orders.upper) == (80, 120)
    # A past alert from ops/volume_alerts and the newest point's own verdict.
    assert orders.alerts == {1: "warning", 3: "error"}
    # A source-less series does not pick up the points of a same-named sourced one.
    assert charts["silver/orders"].rows == (5, 6) and charts["silver/orders"].alerts == {}


def test_svg_is_well_formed_with_band_line_and_alert_dots() -> None:
    chart = SeriesChart("bronze/orders source=<x>", (100, 104, 30), 80.0, 120.0, 100.0, "error",
                        {2: "error"})  # fmt: skip
    root = ET.fromstring(volume_svg(chart))  # raises if the label is not escaped
    assert root.find(f"{SVG}title").text == "bronze/orders source=<x>"  # type: ignore[union-attr]
    band = root.findall(f"{SVG}rect")[1]
    assert float(band.get("height", 0)) > 0
    points = root.find(f"{SVG}polyline").get("points", "").split()  # type: ignore[union-attr]
    assert len(points) == 3
    dots = root.findall(f"{SVG}circle")
    assert [d.get("fill") for d in dots] == ["#dc2626"]
    # The alerting point is drawn below the band's bottom edge (y grows downwards).
    assert float(dots[0].get("cy", 0)) > float(band.get("y", 0)) + float(band.get("height", 0))


def test_svg_without_band_or_history_still_draws() -> None:
    for chart in (
        SeriesChart("s", (), None, None, None, "insufficient_history", {}),
        SeriesChart("s", (3,), None, 5.0, float("nan"), "ok", {}),
    ):
        ET.fromstring(volume_svg(chart))


def test_markdown_embeds_each_chart_as_a_data_uri_image() -> None:
    charts = [
        SeriesChart("a", (1, 2), 0.0, 3.0, 1.5, "ok", {}),
        SeriesChart("b", (9, 0), 5.0, None, 9.0, "error", {1: "error"}),
    ]
    markdown = render_volume_charts(charts, run_id="run-1")
    images = re.findall(r"!\[([^\]]*)\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert [label for label, _ in images] == ["a", "b"]
    assert ET.fromstring(base64.b64decode(images[1][1])).tag == f"{SVG}svg"
    assert "| b | █▁ | 0 | 9 | 5 .. - | **error** |" in markdown
    assert svg_data_uri("<svg/>") == "data:image/svg+xml;base64,PHN2Zy8+"
    assert "(no volume metrics yet)" in render_volume_charts([], run_id="r")


def test_pipeline_summary_links_sub_runs_and_names_every_stage() -> None:
    markdown = render_pipeline_summary(
        run_id="run-1",
        sub_runs=[SubRun("ingest", "abc", "Failed"), SubRun("publish", None, "Completed")],
        ingested=[IngestReport("orders", "bronze/orders", 10, 1, 0, None, quarantined_rows=2)],
        tables=[TableReport("silver/contacts", 12, 9, 2, 1)],
        rule_counts=[
            {"table": "silver/contacts", "rule": "email_syntax", "rows": 1},
            {"table": "silver/contacts", "rule": "email_syntax", "rows": 1},
        ],
        audience_sizes={"loyal": 5, "unsent": 3},
        published=[
            PublishReport("mailchimp", "loyal", "list-1", 5, 6, 4, 1, 1, held="a | b"),
        ],
        failed_sources={"crm": "SourceError: 503"},
    )
    assert "- [ingest](/runs/flow-run/abc): Failed" in markdown
    assert "- publish: Completed" in markdown
    assert "| crm | SourceError: 503 |" in markdown
    assert "| bronze/orders | 12 | 10 | 2 | 0 |" in markdown
    assert "| silver/contacts | 12 | 9 | 2 | 1 |" in markdown
    assert "| silver/contacts | email_syntax | 2 |" in markdown
    assert "| loyal | 5 | mailchimp | **held** | 6 | 4 | 1 | 1 | 0 | a \\| b |" in markdown
    assert "| unsent | 3 | (none) | not published |" in markdown
    assert "| mailchimp | 4 | 1 | 1 |" in markdown
    assert "- mailchimp/loyal held: a | b" in markdown


@pytest.mark.parametrize(
    ("root", "key"),
    [
        ("s3://bucket/lake", "s3://bucket/lake/silver/contacts"),
        ("s3://bucket/lake/", "s3://bucket/lake/silver/contacts"),
        ("/abs/.lake", "file:///abs/.lake/silver/contacts"),
    ],
)
def test_lake_asset_keys_are_uris_prefect_accepts(root: str, key: str) -> None:
    from prefect.assets import Asset

    assert lake_asset_key(root, "silver/contacts") == key
    assert Asset(key=key).key == key
    assert (
        Asset(key=destination_asset_key("mailchimp", "mc", "list-1")).key == "mailchimp://mc/list-1"
    )
