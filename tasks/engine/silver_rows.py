"""Silver rows from staged rows: read a scope's live staged rows, build and check them.

Frames in, frames out: :func:`silver_rows` touches no lake, so a full build, an incremental
build and one bucket of people (:mod:`tasks.engine.silver_buckets`), wherever it runs, build
the same rows the same way; :func:`balances` are the row balances of what was built.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from tasks.core.config import PipelineConfig
from tasks.core.contracts import SilverContact, SilverEvent, SilverOrder, Split
from tasks.core.entities import (
    dedupe_enrichment,
    dedupe_events,
    dedupe_orders,
    resolve_contacts,
    silver_events,
    silver_orders,
)
from tasks.core.incremental import values_in
from tasks.core.tables import CONTACTS, EVENTS, ORDERS, ROLES
from tasks.engine.checks import Checker
from tasks.engine.scope import Scope, live_where
from tasks.reports import TableReport


def live_rows_of(logs: dict[str, pl.LazyFrame], scope: Scope | None) -> dict[str, pl.DataFrame]:
    """Per role, the live staged rows of the records in ``scope`` (every record if None)."""
    if scope is None:
        wanted = {role: pl.lit(True) for role in ROLES}
    else:
        wanted = {
            "contacts": values_in("email", scope.emails),
            "enrichment": values_in("email", scope.emails),
            "orders": values_in("order_id", scope.order_ids),
            "events": values_in("event_id", scope.event_ids),
        }
    frames = pl.collect_all([live_where(logs[r], wanted[r]) for r in ROLES])
    return dict(zip(ROLES, frames, strict=True))


@dataclass(frozen=True)
class SilverRows:
    """Silver rows built from staged rows, checked: what :func:`commit_silver` writes.

    ``person_orders``/``person_events``: the deduplicated orders and events of the people
    rebuilt (what identity resolution read); ``contacts``: the resolved people before checks.
    """

    orders: Split
    events: Split
    contacts: Split
    resolved: pl.DataFrame
    person_orders: pl.DataFrame
    person_events: pl.DataFrame


def silver_rows(
    rows: dict[str, pl.DataFrame],
    scope: Scope | None,
    config: PipelineConfig,
    *,
    checker: Checker,
    secret: bytes,
    version: int,
    consent: pl.DataFrame | None = None,
    links: pl.LazyFrame | None = None,
) -> SilverRows:
    """Build and check silver orders, events and contacts from live staged rows (no lake).

    ``consent``: the people's current consent from the consent ledger
    (:func:`tasks.engine.consent.record_and_decide`); without it, derived from their rows.
    ``links``: the anonymous-id links of all events, when ``rows`` are one bucket of people.
    """
    settings = config.transform
    rates = settings.currency.to_reporting()
    orders = dedupe_orders(rows["orders"].lazy()).collect()
    events = dedupe_events(rows["events"].lazy()).collect()
    enrichment = dedupe_enrichment(rows["enrichment"].lazy()).collect()
    person = pl.lit(True) if scope is None else values_in("email", scope.emails)

    built_orders = silver_orders(
        orders.lazy(), rates=rates, pepper=secret, key_version=version
    ).collect()
    checked_orders = checker.check(built_orders, SilverOrder, table=ORDERS)
    built_events = silver_events(
        events.lazy(), pepper=secret, key_version=version, links=links
    ).collect()
    checked_events = checker.check(built_events, SilverEvent, table=EVENTS)
    person_orders = orders.filter(person)
    contacts = (
        resolve_contacts(
            rows["contacts"].lazy(),
            enrichment.lazy(),
            person_orders.lazy(),
            events.lazy(),
            identity=settings.identity,
            pepper=secret,
            key_version=version,
            consent=None if consent is None else consent.lazy(),
            links=links,
        )
        .filter(person)
        .collect()
    )
    checked_contacts = checker.check(contacts, SilverContact, table=CONTACTS)
    return SilverRows(
        orders=checked_orders,
        events=checked_events,
        contacts=checked_contacts,
        resolved=contacts,
        person_orders=person_orders,
        person_events=events.filter(person),
    )


def balances(
    rows: dict[str, pl.DataFrame], built: SilverRows, rejected: dict[str, int]
) -> list[TableReport]:
    """Balances over the rows processed this run: the changed rows staging rejected, plus the
    staged rows each rebuild read. Duplicates are counted from the inputs, independently of
    what was built, so a balance that holds proves one row per key and no lost record."""

    def superseded(frame: pl.DataFrame, key: str) -> int:
        return frame.height - frame.get_column(key).n_unique()

    contacts = built.resolved
    merged_people = int(contacts.get_column("record_count").sum() or 0) - contacts.height
    return [
        TableReport(
            CONTACTS,
            rows_in=rejected["contacts"]
            + rejected["enrichment"]
            + rows["contacts"].height
            + rows["enrichment"].height
            + _distinct_people(built.person_orders)
            + _distinct_people(built.person_events),
            rows_out=built.contacts.valid.height,
            quarantined=rejected["contacts"] + rejected["enrichment"] + built.contacts.rejected,
            duplicates=superseded(rows["enrichment"], "email") + merged_people,
        ),
        TableReport(
            ORDERS,
            rows_in=rejected["orders"] + rows["orders"].height,
            rows_out=built.orders.valid.height,
            quarantined=rejected["orders"] + built.orders.rejected,
            duplicates=superseded(rows["orders"], "order_id"),
        ),
        TableReport(
            EVENTS,
            rows_in=rejected["events"] + rows["events"].height,
            rows_out=built.events.valid.height,
            quarantined=rejected["events"] + built.events.rejected,
            duplicates=superseded(rows["events"], "event_id"),
        ),
    ]


def _distinct_people(frame: pl.DataFrame) -> int:
    """Distinct ``(source, email)`` with an email: the identity records a role contributes."""
    return frame.filter(pl.col("email").is_not_null()).select("_source", "email").n_unique()
