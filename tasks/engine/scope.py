"""What an incremental silver build rebuilds: the people, orders and events a change touches.

The staging log rows appended since the last build name records that appeared, changed or
disappeared (with their old content). :func:`change_scope` turns them into the emails of the
people to rebuild, the orders and events to rebuild, and the contact keys gold must recompute.
Links that cross people are followed explicitly: an order may move between people, an event is
linked by email or by an anonymous id shared with other events, so every delivery of an event
and every event of an anonymous id is closed over (:func:`event_closure`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl

from tasks.connectors.lake import Lake
from tasks.core.incremental import SEQ, live_rows, values_in
from tasks.core.normalise import contact_key
from tasks.core.tables import CONTACTS, EVENTS, ORDERS, ROLES

# Rounds of the event/anonymous-id closure before giving up on incremental (a pathological
# chain of devices shared across many people); each round is one filtered scan.
MAX_CLOSURE_ROUNDS = 25


@dataclass(frozen=True)
class Scope:
    """What an incremental build rebuilds: people (emails), orders and events.

    ``contact_keys`` are the keys of ``emails`` plus those of people who may lose an order or
    an event link (found through silver); ``changed_rows`` counts the staging rows behind it.
    """

    emails: pl.Series
    order_ids: pl.Series
    event_ids: pl.Series
    contact_keys: pl.Series
    changed_rows: int


def live_where(log: pl.LazyFrame, predicate: pl.Expr) -> pl.LazyFrame:
    """Live staged rows of the records matching ``predicate`` (a condition on their content;
    every log row of a record has the same content, so a record is kept or dropped whole)."""
    return live_rows(log.filter(predicate))


ANON = "_anon"
"""Source and anonymous id joined by a unit separator: an id means something only in its
source."""


def _with_anon(events_log: pl.LazyFrame) -> pl.LazyFrame:
    return events_log.with_columns(
        pl.concat_str(["_source", "anonymous_id"], separator="\x1f").alias(ANON)
    )


def event_closure(
    events_log: pl.LazyFrame, ids: pl.Series, anons: pl.Series
) -> pl.DataFrame | None:
    """Live staged events reachable from event ``ids`` and ``anons`` (see :data:`ANON`).

    Every delivery of an event and every event of an anonymous id, to a fixpoint, so dedupe and
    anonymous-id links are computed from complete groups exactly as a full build computes them.
    None if it does not settle within :data:`MAX_CLOSURE_ROUNDS` rounds.
    """
    ids, anons = ids.drop_nulls().unique(), anons.drop_nulls().unique()
    for _ in range(MAX_CLOSURE_ROUNDS):
        rows = live_where(
            _with_anon(events_log), values_in("event_id", ids) | values_in(ANON, anons)
        )
        found = rows.collect()
        more_ids = found.get_column("event_id").unique()
        more_ids = more_ids.filter(~more_ids.is_in(ids))
        more_anons = found.get_column(ANON).drop_nulls().unique()
        more_anons = more_anons.filter(~more_anons.is_in(anons))
        if more_ids.is_empty() and more_anons.is_empty():
            return found
        ids = pl.concat([ids, more_ids])
        anons = pl.concat([anons, more_anons])
    return None


def column_values(frames: Iterable[pl.DataFrame], name: str) -> pl.Series:
    """The non-null values of ``name`` across ``frames``."""
    parts = [f.get_column(name) for f in frames if name in f.columns]
    if not parts:
        return pl.Series(name, [], pl.String)
    return pl.concat(parts).drop_nulls().unique()


def change_scope(
    lake: Lake,
    logs: dict[str, pl.LazyFrame],
    since: dict[str, int],
    *,
    secret: bytes,
    version: int,
    also: pl.Series | None = None,
) -> Scope | None:
    """The people, orders and events touched by staging rows newer than ``since``, plus the
    people at the emails ``also`` names (whose consent changed outside the sources).

    The log rows appended since name records that appeared, changed or disappeared (with their
    old content), hence:

    - people: every email on a changed contact, enrichment, order or event row, on any version
      of a changed order (it may move between people), on any event sharing a delivery or an
      anonymous id with a changed event (links may move), and the people silver links to the
      changed orders and events now;
    - orders: the changed ones and every order of an affected person;
    - events: the changed ones and every event of an affected person, closed over deliveries
      and anonymous ids (:func:`event_closure`).

    None when the change is too entangled to pay off (a full build is cheaper).
    """
    changed = dict(
        zip(
            ROLES,
            pl.collect_all([logs[r].filter(pl.col(SEQ) > since.get(r, 0)) for r in ROLES]),
            strict=True,
        )
    )
    order_ids = column_values([changed["orders"]], "order_id")
    seed_events = event_closure(
        logs["events"],
        column_values([changed["events"]], "event_id"),
        _with_anon(changed["events"].lazy()).collect().get_column(ANON),
    )
    if seed_events is None:
        return None
    lookups = [live_where(logs["orders"], values_in("order_id", order_ids)).select("email")]
    if lake.exists(ORDERS):
        lookups.append(
            lake.scan(ORDERS).filter(values_in("order_id", order_ids)).select("contact_key")
        )
    if lake.exists(EVENTS):
        seed_ids = seed_events.get_column("event_id")
        lookups.append(
            lake.scan(EVENTS).filter(values_in("event_id", seed_ids)).select("contact_key")
        )
    found = pl.collect_all(lookups)
    old_keys = column_values(found[1:], "contact_key")
    old_people = (
        lake.scan(CONTACTS).filter(values_in("contact_key", old_keys)).select("email").collect()
        if lake.exists(CONTACTS) and old_keys.len()
        else pl.DataFrame(schema={"email": pl.String()})
    )
    extra = [] if also is None else [also.to_frame("email")]
    emails = column_values(
        [*changed.values(), found[0], seed_events, old_people, *extra], "email"
    ).sort()
    person_events, person_orders = pl.collect_all(
        [
            live_where(_with_anon(logs["events"]), values_in("email", emails)).select(
                "event_id", ANON
            ),
            live_where(logs["orders"], values_in("email", emails)).select("order_id"),
        ]
    )
    events = event_closure(
        logs["events"],
        column_values([seed_events, person_events], "event_id"),
        column_values([seed_events, person_events], ANON),
    )
    if events is None:
        return None
    keys = pl.DataFrame({"email": emails}).select(
        contact_key(pl.col("email"), pepper=secret, version=version).alias("contact_key")
    )
    return Scope(
        emails=emails,
        order_ids=column_values([changed["orders"], person_orders], "order_id"),
        event_ids=events.get_column("event_id").unique(),
        contact_keys=pl.concat([keys.get_column("contact_key"), old_keys]).unique().sort(),
        changed_rows=sum(f.height for f in changed.values()),
    )
