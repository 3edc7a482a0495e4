"""The pure queries behind ``audience-lake status`` and ``history``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from tasks.core.status import audience_history, audience_trend, last_stage_runs, source_lag
from tasks.core.sync import LEDGER_SCHEMA
from tasks.volume import VOLUME_SCHEMA

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _volume(rows: list[tuple[str, int, str, str | None, int]]) -> pl.LazyFrame:
    return pl.LazyFrame(
        [
            {"run_id": run, "measured_at": T0 + timedelta(hours=h), "table": table,
             "source": None, "segment": segment, "rows": n, "quarantined": 0}
            for run, h, table, segment, n in rows
        ],
        schema=VOLUME_SCHEMA,
    )  # fmt: skip


def test_audience_trend_is_oldest_first_and_ends_with_the_latest_size() -> None:
    volume = _volume(
        [(f"r{h}", h, "gold/audience_members", "vip", n) for h, n in [(3, 30), (1, 10), (2, 20)]]
        + [("r1", 1, "silver/contacts", None, 999)]
    )
    trend = audience_trend(volume, points=2).collect()
    assert trend.to_dicts() == [{"segment": "vip", "rows": 30, "trend": [20, 30]}]


def test_last_stage_runs_per_layer_and_publish() -> None:
    volume = _volume([("a", 1, "bronze/crm", None, 5), ("b", 2, "gold/audience_members", "x", 1)])
    ledger = pl.LazyFrame(
        [{"destination": "m", "audience": "l", "segment": "x", "contact_key": "k",
          "action": "subscribe", "payload_hash": "h", "status": "ok", "error": None,
          "run_id": "c", "synced_at": T0 + timedelta(hours=3)}],
        schema=LEDGER_SCHEMA,
    )  # fmt: skip
    runs = {r["stage"]: r["run_id"] for r in last_stage_runs(volume, ledger).collect().to_dicts()}
    assert runs == {"ingest": "a", "transform": "b", "publish": "c"}
    counts = audience_history(ledger, "x").collect()
    assert counts.select("audience", "run_id", "contacts").row(0) == ("l", "c", 1)
    empty = pl.LazyFrame(schema=LEDGER_SCHEMA)
    assert last_stage_runs(volume, empty).collect()["stage"].to_list() == ["ingest", "transform"]


def test_source_lag_shows_when_rows_landed_and_the_newest_cursor() -> None:
    bronze = pl.LazyFrame(
        {
            "_ingested_at": [T0, T0 + timedelta(hours=1)],
            "updated_at": ["2026-10-30T10:00:00Z", "2026-10-31T09:00:00Z"],
        }
    )
    now = pl.lit(T0 + timedelta(hours=3))
    row = source_lag(bronze, source="orders", now=now, cursor="updated_at").collect().row(0)
    assert row == ("orders", T0 + timedelta(hours=1), "2026-10-31T09:00:00Z", timedelta(hours=2))
    without = source_lag(bronze, source="events", now=now).collect()
    assert without["cursor"].to_list() == [None]
