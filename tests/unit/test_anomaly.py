"""The volume-anomaly detector on synthetic histories, lineage to audiences, and removals."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.core.anomaly import (
    CHECK_SCHEMA,
    VolumeAnomaly,
    anomalies_from,
    audiences_fed,
    current_points,
    held_segments,
    score_volumes,
    with_thresholds,
)
from tasks.core.anomaly_report import render_markdown, render_message
from tasks.core.audience_lineage import source_audiences
from tasks.core.config import FEATURE_COLUMNS, PipelineConfig, parse_pipeline
from tasks.core.config_anomaly import THRESHOLD_FIELDS, RemovalGuard, VolumeConfig
from tasks.core.feature_catalog import FEATURE_ROLES
from tasks.core.removal_guard import audience_removals, removal_hold
from tasks.errors import ConfigError

# A Sunday, 06:00 UTC: the "current" run of most tests.
NOW = datetime(2026, 11, 1, 6, tzinfo=UTC)
assert NOW.weekday() == 6


def history(
    values: list[int],
    *,
    table: str = "silver/contacts",
    source: str | None = None,
    segment: str | None = None,
    end: datetime = NOW,
    step: timedelta = timedelta(days=1),
) -> list[dict[str, Any]]:
    """Daily points ending at ``end`` (the last value is the current point)."""
    count = len(values)
    return [
        {
            "run_id": f"run-{i}",
            "measured_at": end - step * (count - 1 - i),
            "table": table,
            "source": source,
            "segment": segment,
            "rows": value,
            "quarantined": 0,
        }
        for i, value in enumerate(values)
    ]


def noisy(level: float, count: int, *, spread: float = 0.02) -> list[int]:
    """Deterministic noise of about +-``spread`` around ``level``."""
    return [round(level * (1 + spread * math.sin(i * 2.3))) for i in range(count)]


def check(rows: list[dict[str, Any]], **defaults: Any) -> dict[str, Any]:
    """The verdict on the single current point of ``rows``."""
    config = VolumeConfig.model_validate({"defaults": defaults})
    result = score_volumes(pl.LazyFrame(rows, schema_overrides=_SCHEMA), config).collect()
    assert result.height == 1, result
    return result.row(0, named=True)


_SCHEMA: dict[str, pl.DataType] = {
    "measured_at": pl.Datetime("us", "UTC"),
    "source": pl.String(),
    "segment": pl.String(),
}


# --- the synthetic histories --------------------------------------------------------------


def test_steady_series_does_not_alert() -> None:
    verdict = check(history(noisy(1000, 43)))
    assert verdict["severity"] == "ok"
    assert verdict["history"] == 42  # lookback_days=42: the 42 days before, not the current one
    assert verdict["expected"] == pytest.approx(1000, rel=0.03)
    assert verdict["lower"] < verdict["rows"] < verdict["upper"]


def test_sudden_80_percent_drop_is_an_error() -> None:
    verdict = check(history([*noisy(1000, 42), 200]))
    assert (verdict["severity"], verdict["rule"]) == ("error", "drop")
    assert verdict["score"] < -6
    assert verdict["rows"] < verdict["lower"]


def test_slow_growth_does_not_alert() -> None:
    # +1.5 % a day for two months: the newest count is far above the window's median, but the
    # window itself spreads as widely, so the robust score stays small.
    values = [round(1000 * 1.015**i) for i in range(60)]
    verdict = check(history(values))
    assert verdict["severity"] == "ok", verdict
    assert verdict["rows"] > 1.3 * verdict["expected"]


def test_too_little_history_never_alerts() -> None:
    verdict = check(history([1000, 1010, 990, 1005, 0]))  # 4 points before the current one
    assert verdict["severity"] == "insufficient_history"
    assert verdict["rule"] is None
    assert check(history([1000, 1010, 990, 1005, 995, 0]))["severity"] == "error"  # 5 suffice


def weekly(count: int) -> list[int]:
    """Weekdays ~1000 rows, Sundays ~400; the last value falls on a Sunday (NOW)."""
    start = NOW - timedelta(days=count - 1)
    return [
        round(
            (400 if (start + timedelta(days=i)).weekday() == 6 else 1000) * (1 + 0.02 * math.sin(i))
        )
        for i in range(count)
    ]


def test_weekly_seasonal_sunday_dip_is_normal_against_sundays() -> None:
    values = weekly(43)
    assert values[-1] < 500  # the current point is a Sunday dip
    same_day = check(history(values), same_weekday=True)
    assert same_day["severity"] == "ok", same_day
    assert same_day["history"] == 6  # the six Sundays of the 42-day window
    all_days = check(history(values), same_weekday=False)
    assert (all_days["severity"], all_days["rule"]) == ("error", "drop")


def test_weekly_seasonal_missing_sunday_traffic_still_alerts_against_sundays() -> None:
    values = weekly(43)
    values[-1] = 60  # a Sunday far below the usual Sunday
    verdict = check(history(values), same_weekday=True)
    assert (verdict["severity"], verdict["rule"]) == ("error", "drop")


def test_zero_rows_is_an_error_whatever_the_direction_or_thresholds() -> None:
    verdict = check(
        history([*noisy(30, 10), 0]),
        direction="spike",
        min_abs_change=1000,
        error_score=100,
        warning_score=100,
    )
    assert (verdict["severity"], verdict["rule"]) == ("error", "zero_rows")
    assert (
        check(history([*noisy(30, 10), 0]), zero_rows=False, direction="spike")["severity"] == "ok"
    )


def test_zero_rows_on_a_series_that_is_usually_empty_is_normal() -> None:
    # e.g. an enrichment drop folder that receives a file now and then
    verdict = check(history([0, 0, 120, 0, 0, 0, 0, 130, 0, 0]))
    assert verdict["severity"] == "ok"


def test_spike_alerts_only_when_the_direction_asks_for_it() -> None:
    values = [*noisy(1000, 20), 5000]
    assert check(history(values), direction="drop")["severity"] == "ok"
    assert check(history(values), direction="drop")["upper"] is None  # no ceiling when drops only
    verdict = check(history(values), direction="both")
    assert (verdict["severity"], verdict["rule"]) == ("error", "spike")
    assert check(history([*noisy(1000, 20), 100]), direction="spike")["severity"] == "ok"


def test_the_current_point_is_not_part_of_its_own_history() -> None:
    values = [1000] * 5 + [100]
    verdict = check(history(values), min_history=6)
    assert verdict["history"] == 5
    assert verdict["severity"] == "insufficient_history"
    # ...and it does not pull the median towards itself.
    assert check(history(values))["expected"] == pytest.approx(1000)


def test_small_changes_need_both_absolute_and_relative_size() -> None:
    small = check(history([*noisy(12, 20, spread=0.0), 4]))  # -67 %, but only 8 rows
    assert small["severity"] == "ok"
    # 50k rows, but only -5 %: a huge score on a very steady series, still no alert
    big = check(history([*noisy(1_000_000, 20, spread=0.001), 950_000]), scale_floor=0.001)
    assert abs(big["score"]) > 6 and big["severity"] == "ok"


def test_warning_between_the_two_scores() -> None:
    # MAD of log counts ~0.1 (sigma ~0.15): a 55 % drop scores ~ -5, between 3.5 and 6.
    values = [round(1000 * (1.12 if i % 2 else 0.9)) for i in range(20)] + [450]
    verdict = check(history(values))
    assert (verdict["severity"], verdict["rule"]) == ("warning", "drop"), verdict
    assert -6 < verdict["score"] < -3.5


def test_flat_history_mad_zero_uses_the_scale_floor() -> None:
    same = check(history([500] * 10 + [500]))
    assert same["score"] == 0 and same["severity"] == "ok"
    near = check(history([500] * 10 + [520]))  # +4 %: under the floor's ~5 % per unit score
    assert near["severity"] == "ok" and math.isfinite(near["score"])
    far = check(history([500] * 10 + [250]))
    assert far["severity"] == "error" and math.isfinite(far["score"])


def test_points_older_than_the_lookback_do_not_train() -> None:
    verdict = check(history([*noisy(1000, 30), 980]), lookback_days=7)
    assert verdict["history"] == 7


# --- which points are current ---------------------------------------------------------------------


MONTH_AGO = NOW - timedelta(days=30)


def test_the_newest_point_of_every_configured_series_is_current() -> None:
    rows = [
        *history(noisy(1000, 10)),
        # a segment dropped from the config a month ago: never judged again
        *history([50] * 10, table="gold/audience_members", segment="retired", end=MONTH_AGO),
        *history([50] * 10, table="gold/audience_members", segment="vip"),
        # the last ingest, measured before the transform was rerun on its own
        *history([300] * 10, table="bronze/crm", source="crm", end=NOW - timedelta(hours=5)),
        *history([300] * 10, table="bronze/old", source="old", end=MONTH_AGO),
    ]
    metrics = pl.LazyFrame(rows, schema_overrides=_SCHEMA)
    current = current_points(metrics, sources=["crm"], segments=["vip"]).collect()
    assert sorted(zip(current["table"], current["measured_at"], strict=True)) == [
        ("bronze/crm", NOW - timedelta(hours=5)),
        ("gold/audience_members", NOW),
        ("silver/contacts", NOW),
    ]
    assert current_points(metrics).collect().height == 5  # None: every series


def test_an_ingest_outage_stays_current_when_only_the_transform_reruns() -> None:
    ingest = history([*noisy(300, 10), 0], table="bronze/crm", source="crm", end=NOW)
    transform = history(noisy(1000, 12), end=NOW + timedelta(hours=3), step=timedelta(hours=1))
    checks = score_volumes(
        pl.LazyFrame([*ingest, *transform], schema_overrides=_SCHEMA), VolumeConfig()
    ).collect()
    crm = checks.filter(pl.col("table") == "bronze/crm").row(0, named=True)
    assert (crm["severity"], crm["rule"]) == ("error", "zero_rows")


def test_every_series_is_judged_on_its_own_history() -> None:
    rows = [
        *history([*noisy(1000, 10), 200]),
        *history([*noisy(40, 10), 40], table="gold/audience_members", segment="a"),
        *history([*noisy(40, 10), 0], table="gold/audience_members", segment="b"),
    ]
    checks = score_volumes(pl.LazyFrame(rows, schema_overrides=_SCHEMA), VolumeConfig()).collect()
    verdicts = {(r["table"], r["segment"]): r["severity"] for r in checks.iter_rows(named=True)}
    assert verdicts == {
        ("gold/audience_members", "a"): "ok",
        ("gold/audience_members", "b"): "error",
        ("silver/contacts", None): "error",
    }
    assert checks.schema == pl.Schema(CHECK_SCHEMA)


# --- per-series thresholds ------------------------------------------------------------------------


VOLUME = VolumeConfig.model_validate(
    {
        "defaults": {"min_history": 5},
        "overrides": [
            {"table": "bronze/*", "direction": "drop", "min_history": 7},
            {"source": "web_?vents", "same_weekday": True},
            {"table": "gold/audience_members", "segment": "vip", "min_abs_change": 1},
            {"table": "bronze/orders", "min_history": 3},  # later wins over bronze/*
        ],
    }
)


@pytest.mark.parametrize(
    ("table", "source", "segment"),
    [
        ("bronze/web_events", "web_events", None),
        ("bronze/orders", "orders", None),
        ("silver/events", "web_events", None),
        ("silver/events", None, None),
        ("gold/audience_members", None, "vip"),
        ("gold/audience_members", None, "other"),
    ],
)
def test_overrides_resolve_the_same_in_polars_and_in_python(
    table: str, source: str | None, segment: str | None
) -> None:
    frame = pl.LazyFrame(
        {"table": [table], "source": [source], "segment": [segment]},
        schema={"table": pl.String, "source": pl.String, "segment": pl.String},
    )
    resolved = with_thresholds(frame, VOLUME).collect().row(0, named=True)
    expected = VOLUME.thresholds_for(table=table, source=source, segment=segment).model_dump()
    assert {k: resolved[k] for k in THRESHOLD_FIELDS} == expected


def test_override_examples() -> None:
    assert VOLUME.thresholds_for(table="bronze/web_events", source="web_events").model_dump() == {
        **VOLUME.defaults.model_dump(),
        "direction": "drop",
        "min_history": 7,
        "same_weekday": True,
    }
    assert VOLUME.thresholds_for(table="bronze/orders", source="orders").min_history == 3
    assert VOLUME.thresholds_for(table="gold/audience_members", segment="vip").min_abs_change == 1


def test_a_segment_override_changes_the_verdict_of_that_segment_only() -> None:
    rows = [
        *history([*noisy(8, 10, spread=0), 2], table="gold/audience_members", segment="vip"),
        *history([*noisy(8, 10, spread=0), 2], table="gold/audience_members", segment="other"),
    ]
    checks = score_volumes(pl.LazyFrame(rows, schema_overrides=_SCHEMA), VOLUME).collect()
    assert dict(zip(checks["segment"], checks["severity"], strict=True)) == {
        "other": "ok",  # a drop of 6 rows is below the default min_abs_change of 10
        "vip": "error",
    }


@pytest.mark.parametrize(
    ("volume", "message"),
    [
        ({"defaults": {"warning_score": 5, "error_score": 4}}, "volume.defaults: error_score"),
        (
            {"overrides": [{"table": "x/y", "error_score": 2}]},
            "overrides[0] {'table': 'x/y'}: error_score (2.0) must be >= warning_score (3.5)",
        ),
        ({"overrides": [{"direction": "drop"}]}, "at least one of table, source, segment"),
        ({"overrides": [{"table": "x/y"}]}, "must set at least one threshold"),
        ({"defaults": {"direction": "down"}}, "volume.defaults.direction"),
        ({"notifiers": {"ops": {"kind": "slack_webhook"}}}, "volume.notifiers.ops.url: Field"),
        ({"notifiers": {"ops": {"kind": "pager", "url": "x"}}}, "volume.notifiers.ops"),
        ({"defaults": {"min_histroy": 3}}, "volume.defaults.min_histroy: Extra inputs"),
    ],
)
def test_bad_volume_config_fails_at_load_naming_the_key(
    volume: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=_escaped(message)):
        parse_pipeline(_pipeline_text(volume), env={})


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


def _pipeline_text(volume: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(
        {
            "sources": {
                "crm": {"kind": "files", "role": "contacts", "path": "/tmp", "format": "csv"}
            },
            "volume": volume,
        }
    )


# --- lineage: which audiences an error holds ------------------------------------------------------


def lineage_config() -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "sources": {
                "crm": {"kind": "files", "role": "contacts", "path": "/x", "format": "csv"},
                "shop": {"kind": "files", "role": "orders", "path": "/x", "format": "csv"},
                "web": {"kind": "files", "role": "events", "path": "/x", "format": "ndjson"},
                "enrich": {"kind": "files", "role": "enrichment", "path": "/x", "format": "csv"},
            },
            "segments": [
                {"name": "loyal", "where": "order_count >= 3"},
                {"name": "browsers", "where": "order_count = 0 AND events_90d >= 3"},
                {"name": "germans", "where": "country = 'DE'"},
                {"name": "top", "where": "order_count >= 10", "priority": 1},
                {"name": "active", "where": "events_30d > 0", "priority": 2},
            ],
        }
    )


TABLE_ROLES = {"silver/contacts": "contacts", "silver/orders": "orders", "silver/events": "events"}


def anomaly(table: str, *, source: str | None = None, segment: str | None = None) -> VolumeAnomaly:
    return VolumeAnomaly(
        table=table, source=source, segment=segment, severity="error", rule="drop", rows=1,
        expected=100.0, lower=80.0, upper=120.0, score=-20.0, history=10, run_id="r",
        measured_at=NOW,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("table", "source", "segment", "held"),
    [
        # contacts feed every audience: identity and consent come from them
        ("bronze/crm", "crm", None, {"loyal", "browsers", "germans", "top", "active"}),
        ("silver/contacts", None, None, {"loyal", "browsers", "germans", "top", "active"}),
        # orders feed what reads order columns; 'active' ranks after 'top', which reads orders
        ("bronze/shop", "shop", None, {"loyal", "browsers", "top", "active"}),
        ("silver/orders", None, None, {"loyal", "browsers", "top", "active"}),
        # events feed what reads event columns
        ("bronze/web", "web", None, {"browsers", "active"}),
        ("silver/events", "web", None, {"browsers", "active"}),
        # 'country' is a canonical field of contacts and enrichment
        ("bronze/enrich", "enrich", None, {"germans"}),
        # a segment's own count holds that segment only
        ("gold/audience_members", None, "loyal", {"loyal"}),
        # features and unknown sources feed everything
        ("gold/customer_features", None, None, {"loyal", "browsers", "germans", "top", "active"}),
        ("bronze/gone", "gone", None, {"loyal", "browsers", "germans", "top", "active"}),
    ],
)
def test_an_error_holds_the_audiences_its_series_feeds(
    table: str, source: str | None, segment: str | None, held: set[str]
) -> None:
    fed = audiences_fed(
        anomaly(table, source=source, segment=segment), lineage_config(), table_roles=TABLE_ROLES
    )
    assert set(fed) == held


def test_a_quarantine_heavy_source_holds_what_it_feeds() -> None:
    config = lineage_config()
    assert source_audiences(config, "web") == ["browsers", "active"]
    assert source_audiences(config, "shop") == ["loyal", "browsers", "top", "active"]
    assert len(source_audiences(config, "crm")) == len(source_audiences(config, "unknown")) == 5


def test_only_errors_hold_and_reasons_name_the_series() -> None:
    rows = [
        *history([*noisy(300, 10), 0], table="bronze/web", source="web"),
        *history(
            [round(1000 * (1.12 if i % 2 else 0.9)) for i in range(20)] + [450],
            table="silver/orders",
        ),  # a warning
    ]
    checks = score_volumes(pl.LazyFrame(rows, schema_overrides=_SCHEMA), VolumeConfig()).collect()
    found = anomalies_from(checks, lineage_config(), table_roles=TABLE_ROLES)
    assert [(a.table, a.severity) for a in found] == [
        ("bronze/web", "error"),
        ("silver/orders", "warning"),
    ]
    assert found[0].holds == ("browsers", "active") and found[1].holds == ()
    held = held_segments(found)
    assert set(held) == {"browsers", "active"}
    assert "bronze/web source=web: 0 rows, expected ~300" in held["browsers"][0]
    assert "zero rows" in held["browsers"][0]


def test_every_feature_column_is_attributed_to_its_roles() -> None:
    # Both come from the feature catalogue: a feature without roles would silently fall back
    # to "every role", an attributed column that is no feature would be a stale entry.
    assert set(FEATURE_ROLES) == set(FEATURE_COLUMNS)
    assert all(FEATURE_ROLES.values())


# --- large removals -------------------------------------------------------------------------------


LEDGER = {k: pl.String for k in ("destination", "audience", "contact_key", "action", "status")}


def ledger(on_list: list[str], *, other: tuple[str, ...] = ()) -> pl.LazyFrame:
    rows = [
        {"destination": "mc", "audience": "list-a", "contact_key": k, "action": "subscribe",
         "status": "ok"} for k in on_list
    ] + [
        {"destination": "mc", "audience": "list-a", "contact_key": k, "action": "unsubscribe",
         "status": "ok"} for k in other
    ]  # fmt: skip
    return pl.LazyFrame(rows, schema=LEDGER)


def plan(subscribe: list[str], unsubscribe: list[str]) -> pl.LazyFrame:
    rows = [{"contact_key": k, "action": "subscribe"} for k in subscribe] + [
        {"contact_key": k, "action": "unsubscribe"} for k in unsubscribe
    ]
    return pl.LazyFrame(rows, schema={"contact_key": pl.String, "action": pl.String})


def test_audience_removals_count_planned_removals_of_contacts_on_the_list() -> None:
    on_list = [f"k{i}" for i in range(100)]
    counts = audience_removals(
        # 30 on the list opt out; "gone1" is retried (its unsubscribe failed: not on the list);
        # contacts who merely left the segment are not in the plan, so they do not count
        plan(["new"], [*on_list[:30], "gone1"]),
        ledger(on_list, other=("gone1", "gone2")),
        destination="mc",
        audience="list-a",
    ).collect()
    assert counts.row(0, named=True) == {"on_list": 100, "removals": 30}
    other_list = audience_removals(
        plan([], on_list[:30]), ledger(on_list), destination="mc", audience="list-b"
    ).collect()
    assert other_list.row(0) == (0, 0)
    empty = audience_removals(plan([], []), ledger([]), destination="mc", audience="list-a")
    assert empty.collect().row(0) == (0, 0)


@pytest.mark.parametrize(
    ("on_list", "removals", "held"),
    [(100, 30, True), (100, 20, False), (30, 9, False), (40, 10, True), (0, 0, False)],
)
def test_removal_hold_needs_share_and_count(on_list: int, removals: int, held: bool) -> None:
    reason = removal_hold(on_list, removals, RemovalGuard(max_share=0.2, min_count=10))
    assert (reason is not None) == held
    if reason:
        assert f"would take {removals:,} of the {on_list:,} contacts off the list" in reason


# --- rendering ------------------------------------------------------------------------------------


def test_markdown_shows_expected_range_and_actual() -> None:
    found = anomaly("bronze/web", source="web")
    found = VolumeAnomaly(**{**found.__dict__, "holds": ("browsers",)})
    text = render_markdown([found], run_id="r1", checked=12, learning=3)
    assert (
        "| **error** | `bronze/web source=web` | 1 | 100 | 80-120 | -20.0 | 10 | drop | browsers |"
        in text
    )
    assert "12 series checked; 3 still learning" in text
    assert "No anomalies." in render_markdown([], run_id="r1", checked=4, learning=0)
    subject, body = render_message([found], run_id="r1")
    assert subject == "Audience Lake: 1 volume error(s), 0 warning(s) in run r1"
    assert "holds publishing of browsers" in body


# --- a property: the reported normal range is exactly where nothing alerts ------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    past=st.lists(st.integers(min_value=0, max_value=5000), min_size=5, max_size=30),
    current=st.integers(min_value=0, max_value=8000),
    direction=st.sampled_from(["drop", "spike", "both"]),
)
def test_counts_inside_the_normal_range_never_alert(
    past: list[int], current: int, direction: str
) -> None:
    verdict = check(history([*past, current]), direction=direction, zero_rows=False)
    lower, upper = verdict["lower"], verdict["upper"]
    inside = (lower is None or current > lower + 1e-6) and (upper is None or current < upper - 1e-6)
    if inside:
        assert verdict["severity"] == "ok", verdict
    outside = (lower is not None and current < lower - 1e-6) or (
        upper is not None and current > upper + 1e-6
    )
    if verdict["severity"] in ("warning", "error"):
        assert outside, verdict
