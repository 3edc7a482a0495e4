"""Silver entities: contacts (one row per person, with current consent), orders and events.

All functions are pure ``LazyFrame -> LazyFrame`` transforms; the caller decides when to collect.

Identity resolution in one paragraph: a *person* is a normalised email. Every source record that
carries an email is an *identity record* of that person: a CRM contact row, an enrichment row,
the customer behind a source's orders, the user behind a source's events. An event that has only
an ``anonymous_id`` belongs to a person when another event of the same source carried both that
id and an email (and no other email: a shared device is not guessed at). Each attribute of the
merged contact survives from its records by source priority, then recency (see
:func:`resolve_contacts`); ``source_ids`` keeps the id of every merged record so a merge can be
explained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl

from tasks.core.config_transform import SURVIVING_ATTRIBUTES, IdentityConfig
from tasks.core.normalise import UTC_MICROS, contact_key, fx_rate

CONTACT_ATTRIBUTES = ("first_name", "last_name", "phone", "country")
ENRICHMENT_ATTRIBUTES = ("company", "job_title", "city", "country")
CONSENT_FIELDS = ("opted_in", "opted_in_at", "opted_out")
CANCELLED_STATUSES = ["cancelled", "canceled", "refunded", "void"]

# Records keyed by the email itself (enrichment rows, order customers, event users) have no id
# of their own: their id in ``source_ids`` is "<source>:email" - "this source's record for this
# contact's email".
EMAIL_KEYED = "email"

IDENTITY_SCHEMA: dict[str, pl.DataType] = {
    "email": pl.String(),
    "_source": pl.String(),
    "record_id": pl.String(),
    "updated_at": UTC_MICROS,
    **{attribute: pl.String() for attribute in SURVIVING_ATTRIBUTES},
    "opted_in": pl.Boolean(),
    "opted_in_at": UTC_MICROS,
    "opted_out": pl.Boolean(),
}

CONTACT_COLUMNS = (
    "contact_key",
    "email",
    *SURVIVING_ATTRIBUTES,
    "consent_status",
    "consent_at",
    "consent_source",
    "consent_event_id",
    "source_ids",
    "record_count",
    "updated_at",
)


def _columns(lf: pl.LazyFrame) -> set[str]:
    return set(lf.collect_schema().names())


# --- dedupe ---------------------------------------------------------------------------------
def latest_per_key(
    lf: pl.LazyFrame, *, key: str, order_by: Sequence[str], tie_break: Sequence[str] = ()
) -> pl.LazyFrame:
    """Keep the newest version of each key: ``order_by`` descending (nulls last), then
    ``tie_break`` ascending, so two versions with equal timestamps resolve the same way on
    every run.
    """
    present = _columns(lf)
    newest = [c for c in order_by if c in present]
    ties = [c for c in tie_break if c in present]
    return lf.sort(
        [key, *newest, *ties],
        descending=[False, *([True] * len(newest)), *([False] * len(ties))],
        nulls_last=True,
        maintain_order=True,
    ).unique(subset=key, keep="first", maintain_order=True)


def dedupe_orders(candidates: pl.LazyFrame) -> pl.LazyFrame:
    """One row per ``order_id``: the latest version (``updated_at``, then ingestion time)."""
    return latest_per_key(
        candidates,
        key="order_id",
        order_by=["updated_at", "_ingested_at"],
        tie_break=["status", "amount", "currency", "email", "category", "_source"],
    )


def dedupe_events(candidates: pl.LazyFrame) -> pl.LazyFrame:
    """One row per ``event_id``: events are immutable, deliveries at-least-once; the first wins."""
    present = _columns(candidates)
    order = [c for c in ("_ingested_at", "occurred_at", "email", "anonymous_id") if c in present]
    return candidates.sort(["event_id", *order], nulls_last=True, maintain_order=True).unique(
        subset="event_id", keep="first", maintain_order=True
    )


def dedupe_enrichment(candidates: pl.LazyFrame) -> pl.LazyFrame:
    """One row per enrichment key (the normalised email): the latest delivery wins."""
    return latest_per_key(
        candidates,
        key="email",
        order_by=["updated_at", "_ingested_at"],
        tie_break=["_source", "company", "job_title", "city", "country"],
    )


# --- consent --------------------------------------------------------------------------------
def consent_events(candidates: pl.LazyFrame) -> pl.LazyFrame:
    """One consent event per candidate row that states consent.

    An explicit opt-out beats an opt-in stated in the same record; a record that states neither
    yields no event (consent fails closed: no event means not subscribed).
    """
    status = (
        pl.when(pl.col("opted_out").fill_null(False))
        .then(pl.lit("unsubscribed"))
        .when(pl.col("opted_in").fill_null(False))
        .then(pl.lit("subscribed"))
        .otherwise(None)
    )
    at = (
        pl.when(status == "subscribed")
        .then(pl.coalesce("opted_in_at", "updated_at"))
        .otherwise(pl.col("updated_at"))
    )
    return candidates.select(
        "email",
        status.alias("consent_status"),
        at.alias("consent_at"),
        pl.col("_source").alias("consent_source"),
    ).filter(pl.col("consent_status").is_not_null())


def current_consent(events: pl.LazyFrame) -> pl.LazyFrame:
    """The latest consent event per email; on a tie, the opt-out wins."""
    return (
        events.with_columns((pl.col("consent_status") == "subscribed").alias("_is_optin"))
        .sort(
            ["email", "consent_at", "_is_optin", "consent_source"],
            descending=[False, True, False, False],
            maintain_order=True,
        )
        .unique("email", keep="first", maintain_order=True)
        .drop("_is_optin")
    )


# --- identity -------------------------------------------------------------------------------
def anonymous_links(events: pl.LazyFrame) -> pl.LazyFrame:
    """``(_source, anonymous_id) -> email`` for ids seen with exactly one email.

    An id seen with two emails (a shared device, a family laptop) links to nobody: engagement
    is never attributed to the wrong person.
    """
    return (
        events.filter(pl.col("email").is_not_null() & pl.col("anonymous_id").is_not_null())
        .group_by("_source", "anonymous_id")
        .agg(pl.col("email").unique().alias("_emails"))
        .filter(pl.col("_emails").list.len() == 1)
        .select("_source", "anonymous_id", pl.col("_emails").list.first().alias("email"))
    )


def link_events(events: pl.LazyFrame, links: pl.LazyFrame) -> pl.LazyFrame:
    """Resolve each event's person: its own email, else its anonymous id's link.

    Adds ``linked_by`` (``email`` | ``anonymous_id`` | null) and fills ``email``.
    """
    linked = links.rename({"email": "_linked_email"})
    return (
        events.join(linked, on=["_source", "anonymous_id"], how="left", nulls_equal=False)
        .with_columns(
            pl.when(pl.col("email").is_not_null())
            .then(pl.lit("email"))
            .when(pl.col("_linked_email").is_not_null())
            .then(pl.lit("anonymous_id"))
            .otherwise(None)
            .alias("linked_by"),
            pl.coalesce("email", "_linked_email").alias("email"),
        )
        .drop("_linked_email")
    )


def _identity(lf: pl.LazyFrame, record_id: pl.Expr, updated_at: pl.Expr) -> pl.LazyFrame:
    """``lf`` as identity records: every column of :data:`IDENTITY_SCHEMA`, nulls where absent."""
    present = _columns(lf)
    exprs = []
    for name, dtype in IDENTITY_SCHEMA.items():
        if name == "record_id":
            exprs.append(record_id.cast(pl.String).alias(name))
        elif name == "updated_at":
            exprs.append(updated_at.cast(dtype).alias(name))
        elif name in present:
            exprs.append(pl.col(name).cast(dtype).alias(name))
        else:
            exprs.append(pl.lit(None, dtype).alias(name))
    return lf.select(exprs)


def identity_records(
    contacts: pl.LazyFrame,
    enrichment: pl.LazyFrame | None = None,
    orders: pl.LazyFrame | None = None,
    events: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """Every record that names a person, one row each, in :data:`IDENTITY_SCHEMA`.

    - each contact row (its ``source_id``), with its attributes and consent statement;
    - each enrichment row (deduped: one per email and source), with its attributes;
    - per order source, one record per customer email (latest order update), no attributes;
    - per event source, one record per email seen on an event (latest event), no attributes.

    Orders, events and enrichment never state consent, so their records carry none.
    """
    parts = [_identity(contacts, pl.col("source_id"), pl.col("updated_at"))]
    if enrichment is not None:
        parts.append(_identity(enrichment, pl.lit(EMAIL_KEYED), pl.col("updated_at")))
    if orders is not None:
        customers = orders.group_by("_source", "email").agg(pl.col("updated_at").max())
        parts.append(_identity(customers, pl.lit(EMAIL_KEYED), pl.col("updated_at")))
    if events is not None:
        users = (
            events.filter(pl.col("email").is_not_null())
            .group_by("_source", "email")
            .agg(pl.col("occurred_at").max())
        )
        parts.append(_identity(users, pl.lit(EMAIL_KEYED), pl.col("occurred_at")))
    return pl.concat(parts, how="vertical")


def _survivor(attribute: str, priority: Sequence[str]) -> pl.Expr:
    """Per group (rows pre-sorted newest first): the attribute's value from the most trusted
    source that has one, the most recent among equally trusted ones."""
    values = pl.col(attribute)
    if priority:
        rank = pl.col("_source").replace_strict(
            {source: i for i, source in enumerate(priority)},
            default=len(priority),
            return_dtype=pl.Int32,
        )
        values = values.sort_by(rank, maintain_order=True)
    return values.drop_nulls().first().alias(attribute)


def resolve_contacts(
    contacts: pl.LazyFrame,
    enrichment: pl.LazyFrame | None = None,
    orders: pl.LazyFrame | None = None,
    events: pl.LazyFrame | None = None,
    *,
    pepper: bytes,
    key_version: int,
    identity: IdentityConfig | None = None,
    consent: pl.LazyFrame | None = None,
    links: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """One row per normalised email with surviving attributes, source ids and current consent.

    Inputs are valid rows, deduped (:func:`dedupe_enrichment`, :func:`dedupe_orders`,
    :func:`dedupe_events`). Survivorship per attribute: the most trusted source (``identity``
    priority; unlisted sources rank last, together) that has a non-null value, and within it the
    most recent record; equal timestamps fall back to source name, then record id, so the
    result never depends on input order.

    Consent comes only from records that state it (contact rows); an orders-only guest or an
    events-only visitor is ``unknown``, which is never published. The latest statement wins;
    on a tie, the opt-out wins.

    ``source_ids`` lists ``<source>:<record id>`` of every merged record plus
    ``<source>:<anonymous id>`` of every anonymous id linked to the person; ``record_count`` is
    the number of identity records merged (:func:`identity_records`).

    ``consent``: the current consent decided by the consent ledger, by ``contact_key``
    (:func:`tasks.core.consent.decide`, which follows the same rule and names the deciding
    event in ``consent_event_id``); without it, consent is derived from the contact rows here
    and no event is named.

    ``links`` are the anonymous-id links (:func:`anonymous_links`) when ``events`` holds only
    part of the events (a bucket of people): an id's link depends on every event carrying it.
    By default they are computed from ``events``.
    """
    identity = identity or IdentityConfig()
    records = identity_records(contacts, enrichment, orders, events).sort(
        ["email", "updated_at", "_source", "record_id"],
        descending=[False, True, False, False],
        nulls_last=True,
        maintain_order=True,
    )
    people = records.group_by("email", maintain_order=True).agg(
        *(_survivor(a, identity.priority_for(a)) for a in SURVIVING_ATTRIBUTES),
        pl.col("updated_at").max(),
        pl.concat_str(["_source", "record_id"], separator=":").alias("source_ids"),
        pl.len().cast(pl.Int64).alias("record_count"),
    )
    if events is not None:
        anonymous = (
            (anonymous_links(events) if links is None else links)
            .group_by("email")
            .agg(pl.concat_str(["_source", "anonymous_id"], separator=":").alias("_anon_ids"))
        )
        people = (
            people.join(anonymous, on="email", how="left")
            .with_columns(
                pl.concat_list("source_ids", pl.col("_anon_ids").fill_null([])).alias("source_ids")
            )
            .drop("_anon_ids")
        )
    people = people.with_columns(
        pl.col("source_ids").list.unique().list.sort(),
        contact_key(pl.col("email"), pepper=pepper, version=key_version).alias("contact_key"),
    )
    if consent is None:
        derived = current_consent(consent_events(_identity_consent(contacts)))
        people = people.join(derived, on="email", how="left").with_columns(
            pl.lit(None, pl.String).alias("consent_event_id")
        )
    else:
        people = people.join(consent, on="contact_key", how="left")
    return (
        people.with_columns(
            pl.col("consent_status").fill_null("unknown"),
            pl.col("consent_at").cast(UTC_MICROS),
        )
        .select(CONTACT_COLUMNS)
        .sort("contact_key")
    )


def _identity_consent(contacts: pl.LazyFrame) -> pl.LazyFrame:
    """Contact rows with every consent field present (a source may map none of them)."""
    return _identity(contacts, pl.col("source_id"), pl.col("updated_at"))


# --- orders and events ----------------------------------------------------------------------
def silver_orders(
    candidates: pl.LazyFrame,
    *,
    rates: Mapping[str, float],
    pepper: bytes,
    key_version: int,
) -> pl.LazyFrame:
    """Orders deduped to their latest version, converted to the reporting currency and linked
    to the person by ``contact_key``.

    ``rates`` maps each convertible currency to its value in the reporting currency (the
    reporting currency maps to 1). Rows must have passed the order contract, which quarantines
    currencies without a rate, so ``fx_rate`` is never null here.
    """
    return (
        dedupe_orders(candidates)
        .with_columns(
            contact_key(pl.col("email"), pepper=pepper, version=key_version).alias("contact_key"),
            fx_rate(pl.col("currency"), rates=rates).alias("fx_rate"),
            pl.coalesce("created_at", "updated_at").alias("created_at"),
        )
        .with_columns((pl.col("amount") * pl.col("fx_rate")).alias("amount_reporting"))
        .select(
            "order_id",
            "contact_key",
            "amount",
            "currency",
            "fx_rate",
            "amount_reporting",
            "category",
            "status",
            "created_at",
            "updated_at",
            "_source",
        )
        .sort("order_id")
    )


def silver_events(
    candidates: pl.LazyFrame,
    *,
    pepper: bytes,
    key_version: int,
    links: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """Events deduped on ``event_id``, each linked to its person where known.

    ``linked_by`` says how: the event's own ``email``, or its ``anonymous_id`` (linked by
    another event of the same source that carried both, see :func:`anonymous_links`).
    ``links``: the links computed over every event, when ``candidates`` are only part of them.
    """
    events = dedupe_events(candidates)
    return (
        link_events(events, anonymous_links(events) if links is None else links)
        .with_columns(
            contact_key(pl.col("email"), pepper=pepper, version=key_version).alias("contact_key")
        )
        .select(
            "event_id",
            "contact_key",
            "anonymous_id",
            "event_type",
            "occurred_at",
            "url",
            "linked_by",
            "_source",
        )
        .sort("event_id")
    )
