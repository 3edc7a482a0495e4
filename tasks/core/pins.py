"""Pure pieces of pinned publishes: naming versions, and opt-outs that outrank a pin.

A publish reads gold at pinned Delta versions, so a rerun can send what a past run sent; it
reads consent at the latest version, never pinned back, because an opt-out always wins. The IO
around these functions is in :mod:`tasks.publish_reads`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import polars as pl

from tasks.core.normalise import normalise_email
from tasks.core.sync import OPT_OUT
from tasks.core.tables import AUDIENCE


def parse_version_pins(items: Iterable[str]) -> dict[str, int]:
    """``["<table>=12", ...]`` -> ``{"<table>": 12}`` (``--version`` options of the CLI).

    Raises:
        ValueError: naming the item that is not ``table=N`` with N a non-negative integer.
    """
    pins: dict[str, int] = {}
    for item in items:
        table, sep, version = item.partition("=")
        if not sep or not table.strip() or not version.strip().isdigit():
            raise ValueError(f"--version {item!r}: expected TABLE=VERSION, e.g. {AUDIENCE}=12")
        pins[table.strip()] = int(version)
    return pins


def newest_versions(records: Iterable[Mapping[str, Iterable[int] | int]]) -> dict[str, int]:
    """Per table, the newest version named in any of ``records`` (``{table: v or [v, ...]}``)."""
    newest: dict[str, int] = {}
    for record in records:
        for table, versions in record.items():
            values = [versions] if isinstance(versions, int) else list(versions)
            if values:
                newest[table] = max(newest.get(table, -1), *values)
    return newest


def versions_json(versions: Mapping[str, int]) -> str:
    """The ``versions`` text of ``ops/sync_history``: sorted keys, so equal reads compare equal."""
    return json.dumps(dict(sorted(versions.items())))


def latest_opt_outs(events: pl.LazyFrame) -> pl.LazyFrame:
    """``contact_key, occurred_at`` of people whose latest email consent event is an opt-out
    (``ops/consent_events`` rows)."""
    return (
        events.filter(pl.col("channel").is_null() | (pl.col("channel") == "email"))
        .sort("occurred_at", nulls_last=False)
        .group_by("contact_key")
        .agg(pl.col("status").last(), pl.col("occurred_at").last())
        .filter(pl.col("status") == "opt-out")
        .select("contact_key", "occurred_at")
    )


def suppressed_keys(suppressions: pl.LazyFrame, contacts: pl.LazyFrame) -> pl.LazyFrame:
    """``contact_key, occurred_at`` of the newest platform suppression of each known address
    (``bronze/platform_suppressions`` rows, matched to contacts by normalised email)."""
    by_email = suppressions.select(
        normalise_email(pl.col("email")).alias("email"), "occurred_at"
    ).filter(pl.col("email").is_not_null())
    return (
        contacts.select("contact_key", "email")
        .join(by_email, on="email")
        .group_by("contact_key")
        .agg(pl.col("occurred_at").max())
    )


def with_newer_opt_outs(contacts: pl.LazyFrame, opt_outs: pl.LazyFrame) -> pl.LazyFrame:
    """``contacts`` with ``consent_status`` set to opted out for everyone whose opt-out in
    ``opt_outs`` (``contact_key, occurred_at``) is newer than their recorded consent (or whose
    consent time is unknown). An opt-out silver has not caught up with yet still wins."""
    names = contacts.collect_schema().names()
    consent_at = (
        pl.col("consent_at") if "consent_at" in names else pl.lit(None, pl.Datetime("us", "UTC"))
    )
    newest = opt_outs.group_by("contact_key").agg(pl.col("occurred_at").max().alias("_opt_out_at"))
    later = pl.col("_opt_out_at").is_not_null() & (
        consent_at.is_null() | (pl.col("_opt_out_at") > consent_at)
    )
    return (
        contacts.join(newest, on="contact_key", how="left")
        .with_columns(
            pl.when(later)
            .then(pl.lit(OPT_OUT))
            .otherwise(pl.col("consent_status"))
            .alias("consent_status")
        )
        .drop("_opt_out_at")
    )
