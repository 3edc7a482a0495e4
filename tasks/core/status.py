"""What ``audience-lake status`` and ``history`` show, as pure queries over the ops tables.

Inputs are the lake's own tables as lazy frames: ``ops/source_runs`` (how each ingest ended),
``ops/volume_metrics`` (row counts per run, table and segment), ``ops/sync_ledger`` (per
destination, audience and contact the last payload sent). Nothing here reads or prints an email:
a person is looked up by their ``contact_key``.
"""

from __future__ import annotations

import polars as pl

from tasks.core.tables import AUDIENCE as AUDIENCE_TABLE


def last_source_runs(source_runs: pl.LazyFrame) -> pl.LazyFrame:
    """``source, status, finished_at, run_id, error`` of each source's latest ingest."""
    return (
        source_runs.sort("finished_at")
        .group_by("source")
        .agg(pl.all().last())
        .select("source", "status", "finished_at", "run_id", "error")
        .sort("source")
    )


def last_stage_runs(volume: pl.LazyFrame, ledger: pl.LazyFrame) -> pl.LazyFrame:
    """``stage, last_at, run_id``: the newest measurement per layer (bronze = ingest, silver and
    gold = transform) from ``ops/volume_metrics``, and the newest send from the ledger (publish)."""
    stages = (
        volume.with_columns(pl.col("table").str.split("/").list.first().alias("layer"))
        .with_columns(
            pl.col("layer")
            .replace_strict(
                {"bronze": "ingest", "silver": "transform", "gold": "transform"}, default=None
            )
            .alias("stage")
        )
        .filter(pl.col("stage").is_not_null())
        .sort("measured_at")
        .group_by("stage")
        .agg(pl.col("measured_at").last().alias("last_at"), pl.col("run_id").last())
    )
    publish = (
        ledger.sort("synced_at")
        .select(
            pl.lit("publish").alias("stage"),
            pl.col("synced_at").last().alias("last_at"),
            pl.col("run_id").last(),
        )
        .filter(pl.col("last_at").is_not_null())
    )
    return pl.concat([stages, publish], how="vertical_relaxed").sort("stage")


def audience_trend(volume: pl.LazyFrame, *, points: int = 5) -> pl.LazyFrame:
    """``segment, rows, trend`` per audience: its size in the latest run and the sizes of its
    last ``points`` runs, oldest first (a list)."""
    return (
        volume.filter((pl.col("table") == AUDIENCE_TABLE) & pl.col("segment").is_not_null())
        .group_by("segment", "run_id")
        .agg(pl.col("rows").sum(), pl.col("measured_at").max())
        .sort("measured_at")
        .group_by("segment")
        .agg(pl.col("rows").last(), pl.col("rows").tail(points).alias("trend"))
        .sort("segment")
    )


def audience_history(ledger: pl.LazyFrame, audience: str) -> pl.LazyFrame:
    """``destination, audience, run_id, synced_at, action, status, contacts`` for one audience
    (a list id or a segment name), newest run first.

    The ledger holds each contact's *latest* sync, so a contact counts under the run that last
    sent to it; earlier sends live on in the table's Delta history.
    """
    return (
        ledger.filter((pl.col("audience") == audience) | (pl.col("segment") == audience))
        .group_by("destination", "audience", "run_id", "action", "status")
        .agg(pl.len().alias("contacts"), pl.col("synced_at").max())
        .sort(["synced_at", "action", "status"], descending=[True, False, False])
        .select("destination", "audience", "run_id", "synced_at", "action", "status", "contacts")
    )


def contact_history(ledger: pl.LazyFrame, contact_key: str) -> pl.LazyFrame:
    """The ledger rows of one contact: where, what and when (no email: it is not in the ledger)."""
    return (
        ledger.filter(pl.col("contact_key") == contact_key)
        .sort("synced_at", descending=True)
        .select(
            "destination",
            "audience",
            "segment",
            "action",
            "status",
            "payload_hash",
            "synced_at",
            "run_id",
            "error",
        )
    )


def source_lag(
    bronze: pl.LazyFrame, *, source: str, now: pl.Expr, cursor: str | None = None
) -> pl.LazyFrame:
    """``source, newest, lag, cursor``: the newest ``_ingested_at`` of a bronze table, how long
    ago that was (``now`` is a literal datetime expression, so the result is deterministic), and
    the highest value of the source's incremental ``cursor`` column as text (None without one:
    the source's own clock, so "landed a minute ago" and "newest change a month old" both show).
    """
    highest = (
        pl.col(cursor).cast(pl.String).max() if cursor is not None else pl.lit(None, pl.String)
    )
    return bronze.select(
        pl.lit(source).alias("source"),
        pl.col("_ingested_at").max().alias("newest"),
        highest.alias("cursor"),
    ).with_columns((now - pl.col("newest")).alias("lag"))
