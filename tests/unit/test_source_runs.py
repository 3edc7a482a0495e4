"""Which sources hold their audiences: the latest ingest of each decides (ops/source_runs)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from tasks.source_runs import SOURCE_RUNS_SCHEMA, latest_failures, mask_emails

T = datetime(2026, 11, 1, tzinfo=UTC)


def runs(*rows: tuple[str, str, str, str | None, int]) -> pl.LazyFrame:
    return pl.LazyFrame(
        [
            {"run_id": r, "source": s, "status": st, "error": e, "finished_at": T + timedelta(h)}
            for r, s, st, e, h in rows
        ],
        schema=SOURCE_RUNS_SCHEMA,
    )


def test_only_a_source_whose_latest_ingest_failed_is_listed() -> None:
    history = runs(
        ("r1", "crm", "failed", "SourceError: down", 1),
        ("r2", "crm", "landed", None, 2),  # landed again: no longer held
        ("r1", "orders", "landed", None, 1),
        ("r2", "orders", "failed", "SourceError: 500", 2),
        ("r3", "events", "failed", "SourceError: old", 1),
        ("r4", "events", "failed", "SourceError: new", 3),
    )
    assert latest_failures(history).collect().rows() == [
        ("events", "r4", "SourceError: new"),
        ("orders", "r2", "SourceError: 500"),
    ]


def test_recorded_errors_mask_addresses() -> None:
    text = "record without primary key 'id': {'email': 'jane.doe+x@mail.example.com'}; a@b.io"
    assert mask_emails(text) == "record without primary key 'id': {'email': '<email>'}; <email>"
