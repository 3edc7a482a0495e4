"""The bare polars contender: the project's pure core functions in one lazy plan, without
contracts, staging or Delta."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl

from benchmarks.contenders.shared import Counts, result_counts
from tasks.core.canonical import NormaliseOptions, to_canonical
from tasks.core.config import PipelineConfig
from tasks.core.entities import (
    dedupe_enrichment,
    dedupe_events,
    dedupe_orders,
    resolve_contacts,
    silver_events,
    silver_orders,
)
from tasks.core.features import customer_features
from tasks.core.normalise import is_valid_email
from tasks.core.segments import audience_members


def bare_polars(
    bronze: dict[str, str], out: Path, config: PipelineConfig, pepper: bytes, as_of: datetime
) -> Counts:
    """The project's pure core functions in one lazy plan, without contracts, staging or Delta.

    ``bronze`` maps a source name to its Delta table path (read with ``pl.scan_delta``).
    """
    settings = config.transform
    options = NormaliseOptions(default_phone_region=settings.default_phone_region)
    rates = settings.currency.to_reporting()

    def role(name: str) -> pl.LazyFrame:
        frames = [
            to_canonical(pl.scan_delta(bronze[source]), spec, source_name=source, options=options)
            for source, spec in config.sources_with_role(name).items()
        ]
        return pl.concat(frames, how="diagonal_relaxed")

    email_ok = is_valid_email(pl.col("email")).fill_null(False)
    contacts = role("contacts").filter(
        pl.col("source_id").is_not_null() & pl.col("updated_at").is_not_null() & email_ok
    )
    enrichment = role("enrichment").filter(pl.col("updated_at").is_not_null() & email_ok)
    orders = role("orders").filter(
        pl.col("order_id").is_not_null()
        & pl.col("updated_at").is_not_null()
        & email_ok
        & (pl.col("amount") >= 0)
        & pl.col("currency").is_in(list(rates))
    )
    events = role("events").filter(
        pl.col("event_id").is_not_null()
        & pl.col("event_type").is_not_null()
        & pl.col("occurred_at").is_not_null()
        & (pl.col("email").is_null() | is_valid_email(pl.col("email")).fill_null(False))
    )
    orders, events, enrichment = (
        dedupe_orders(orders).cache(),
        dedupe_events(events).cache(),
        dedupe_enrichment(enrichment),
    )
    built = pl.collect_all(
        [
            resolve_contacts(
                contacts,
                enrichment,
                orders,
                events,
                identity=settings.identity,
                pepper=pepper,
                key_version=1,
            ),
            silver_orders(orders, rates=rates, pepper=pepper, key_version=1),
            silver_events(events, pepper=pepper, key_version=1),
        ]
    )
    silver_contacts, silver_orders_, silver_events_ = built
    features = customer_features(
        silver_contacts.lazy(),
        silver_orders_.lazy(),
        silver_events_.lazy(),
        as_of=as_of,
        rfm_window_days=settings.features.rfm_window_days,
    ).collect()
    audience = audience_members(features.lazy(), silver_contacts.lazy(), config.segments).collect()
    for name, frame in {
        "contacts": silver_contacts,
        "orders": silver_orders_,
        "events": silver_events_,
        "features": features,
        "audience": audience,
    }.items():
        frame.write_parquet(out / f"{name}.parquet")
    return result_counts(
        silver_contacts.height,
        silver_orders_.height,
        silver_events_.height,
        features.height,
        dict(audience.group_by("segment").len().iter_rows()),
        float(features.get_column("lifetime_value").sum()),
    )
