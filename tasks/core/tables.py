"""The table catalogue: every table of the lake, in one place.

Each entry says what a newcomer (or a privacy review) needs to know about a table: its name,
its columns where they are fixed, the key one row is identified by, how it is partitioned,
how it is written, which columns hold direct identifiers of a person, and how long its rows are
kept. Every module takes table names, schemas and partitioning from here; nothing else spells
``"silver/..."``.

Layers (see ``docs/architecture.md``):

- ``bronze/<source>``: what a source said, as it said it (one table per source, see
  :func:`bronze_table`); its columns are the source's own and evolve with it.
- ``silver/staged_<role>``: the staging log of each source role (valid canonical rows, see
  :mod:`tasks.core.incremental`); ``silver/contacts``, ``silver/orders``, ``silver/events``:
  validated, deduplicated, one row per person / order / event (columns: the contracts
  ``SilverContact``, ``SilverOrder``, ``SilverEvent`` in :mod:`tasks.core.contracts`).
- ``gold/customer_features`` (columns: :data:`tasks.core.feature_catalog.FEATURE_COLUMNS`),
  ``gold/audience_members`` and ``gold/audience_holdouts`` (both partitioned by segment).
- ``ops/...``: the pipeline's own records (quarantine, volumes, alerts, source runs, the sync
  ledger and sync history, publish leases, the run audit).

Write modes: ``merge`` (upsert on the keys, rows that changed only), ``append_once`` (an
append carrying a batch id, committed at most once), ``insert_new`` (rows whose keys are new),
``log`` (the staging log: ``append_once`` per sequence number, ``overwrite`` on a full
restage), ``conditional_append`` (a commit that fails when another writer got there first).
Retention: ``retention_days`` (None keeps rows until the pipeline itself deletes them) counted
on ``retention_column``; tables that hold evidence or current state say why in ``kept_because``
and never expire; silver and gold have no retention of their own: their rows follow bronze at
the next transform. See :mod:`tasks.core.retention` and the README, *Retention*.

Identifiers (``pii``): a table lists the columns holding a direct identifier of a person
(:data:`PII_FIELDS`, or a source column mapped to one). Only tables that need them to do their
job have any: bronze (what the source said), the staging logs (the contact key is recomputed
from the email on a rebuild or pepper rotation), ``silver/contacts`` (the person) and
``gold/audience_members`` (what a destination needs to address and greet). Every other table
identifies a person by ``contact_key`` only; ``masked`` columns quote rows or errors with
identifiers masked. See ``docs/architecture.md``, *Tables*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import polars as pl

from tasks.core.canonical import canonical_schema
from tasks.core.config_base import ROLE_FIELDS, SourceBase
from tasks.core.feature_catalog import FEATURE_COLUMNS
from tasks.core.incremental import LOG_COLUMNS
from tasks.core.normalise import UTC_MICROS
from tasks.core.ops_tables import ALERT_SCHEMA as ALERT_SCHEMA
from tasks.core.ops_tables import CONSENT_EVENTS_SCHEMA as CONSENT_EVENTS_SCHEMA
from tasks.core.ops_tables import ERASURE_LOG_SCHEMA as ERASURE_LOG_SCHEMA
from tasks.core.ops_tables import ERASURE_REQUEST_SCHEMA as ERASURE_REQUEST_SCHEMA
from tasks.core.ops_tables import LEASE_SCHEMA as LEASE_SCHEMA
from tasks.core.ops_tables import LEDGER_KEYS as LEDGER_KEYS
from tasks.core.ops_tables import LEDGER_SCHEMA as LEDGER_SCHEMA
from tasks.core.ops_tables import PLATFORM_SUPPRESSIONS_SCHEMA as PLATFORM_SUPPRESSIONS_SCHEMA
from tasks.core.ops_tables import QUARANTINE_SCHEMA as QUARANTINE_SCHEMA
from tasks.core.ops_tables import RUNS_SCHEMA as RUNS_SCHEMA
from tasks.core.ops_tables import SOURCE_RUNS_SCHEMA as SOURCE_RUNS_SCHEMA
from tasks.core.ops_tables import VOLUME_SCHEMA as VOLUME_SCHEMA
from tasks.core.publish_tables import HOLDOUTS_SCHEMA as HOLDOUTS_SCHEMA
from tasks.core.publish_tables import SYNC_HISTORY_SCHEMA as SYNC_HISTORY_SCHEMA

WriteMode = Literal["merge", "append_once", "insert_new", "log", "conditional_append"]
Layer = Literal["bronze", "silver", "gold", "ops"]

PII_FIELDS = (
    "email",
    "first_name",
    "last_name",
    "phone",
    "ip",
    "ip_address",
    "consent_ip",
    "address",
)
"""Canonical fields (and the ``<field>_raw`` copies kept beside them) that identify a person
directly. A ``contact_key`` is a keyed hash, not a direct identifier."""
MAY_QUOTE_PII = ("url",)
"""Canonical fields of free text that may quote an identifier (``?email=...`` in a URL): a
source column mapped to one is an identifier column of bronze; from staging on, the normaliser
masks the addresses in it (:mod:`tasks.core.canonical`)."""


@dataclass(frozen=True)
class Table:
    """One lake table: what it holds and how it is written."""

    name: str
    doc: str
    schema: dict[str, pl.DataType] | None
    keys: tuple[str, ...]
    write: WriteMode
    partition_by: tuple[str, ...] = ()
    pii: tuple[str, ...] = ()
    retention_days: int | None = None
    """Default age in days after which maintenance deletes a row (None: kept); ``maintenance.
    retention`` in pipeline.yaml overrides it (see :mod:`tasks.core.retention`)."""
    retention_column: str | None = None
    """The timestamp that decides a row's age. None: rows never expire by age, either because
    the table is derived (silver and gold follow bronze) or because ``kept_because`` says so."""
    kept_because: str | None = None
    """Why the table's rows must never expire (evidence, current state): configuring a
    retention for it is refused."""
    cluster_by: tuple[str, ...] = ()
    """Columns reads filter on within a partition; maintenance Z-orders the table by them."""
    masked: tuple[str, ...] = ()
    """Columns that would quote identifiers (a row, a value, an error) and hold them masked
    (:mod:`tasks.core.masking`): no raw identifier, but a hint of one."""

    @property
    def layer(self) -> Layer:
        layer = self.name.split("/", 1)[0]
        assert layer in ("bronze", "silver", "gold", "ops"), self.name
        return layer  # type: ignore[return-value]


# --- names --------------------------------------------------------------------------------------
BRONZE_PREFIX = "bronze/"
ROLES = ("contacts", "enrichment", "orders", "events")
STAGED = {role: f"silver/staged_{role}" for role in ROLES}
"""Per role: the staging log of valid canonical rows (see :mod:`tasks.core.incremental`)."""
CONTACTS = "silver/contacts"
ORDERS = "silver/orders"
EVENTS = "silver/events"
FEATURES = "gold/customer_features"
AUDIENCE = "gold/audience_members"
HOLDOUTS = "gold/audience_holdouts"
QUARANTINE = "ops/quarantine"
VOLUME_METRICS = "ops/volume_metrics"
VOLUME_ALERTS = "ops/volume_alerts"
SOURCE_RUNS = "ops/source_runs"
SYNC_LEDGER = "ops/sync_ledger"
SYNC_HISTORY = "ops/sync_history"
PUBLISH_LEASES = "ops/publish_leases"
RUNS = "ops/runs"
ERASURE_REQUESTS = "ops/erasure_requests"
ERASURE_LOG = "ops/erasure_log"
PLATFORM_SUPPRESSIONS = "bronze/platform_suppressions"
"""Opt-outs read back from the email platforms: consent evidence of its own source."""
CONSENT_EVENTS = "ops/consent_events"

ROLE_TABLES = {"contacts": CONTACTS, "enrichment": CONTACTS, "orders": ORDERS, "events": EVENTS}
"""The silver table each source role feeds."""
TABLE_ROLES = {CONTACTS: "contacts", ORDERS: "orders", EVENTS: "events"}
"""Source-less silver tables and the role whose data they hold (for lineage to audiences)."""
BUILT_TABLES = (CONTACTS, ORDERS, EVENTS, AUDIENCE)
"""Tables whose versions the transform state records (plus ``FEATURES``, which carries it)."""
GOLD_INPUTS: dict[str, tuple[str, ...]] = {
    FEATURES: (CONTACTS, ORDERS, EVENTS),
    AUDIENCE: (FEATURES, CONTACTS),
}
"""Gold tables and what they are built from (silver tables: their roles' bronze)."""


INGESTED_AT = "_ingested_at"
"""Bronze's ingest time: when the row (or the version of it bronze holds) was landed."""
EVENTS_RETENTION_DAYS = 395
"""Raw events are kept 13 months: a year of history plus a month for year-on-year questions."""


def bronze_table(source_name: str) -> str:
    """The bronze table of a source: ``bronze/<source name>``."""
    return f"{BRONZE_PREFIX}{source_name}"


def is_bronze(table: str) -> bool:
    return table.startswith(BRONZE_PREFIX)


# --- schemas ------------------------------------------------------------------------------------
def staging_schema(role: str) -> dict[str, pl.DataType]:
    """Columns of ``silver/staged_<role>``: canonical columns plus the log columns."""
    return {**canonical_schema(role), **{c: pl.Int64() for c in LOG_COLUMNS}}


def pii_columns(columns: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The columns among ``columns`` that hold a :data:`PII_FIELDS` value (or its raw copy)."""
    return tuple(c for c in columns if c.removesuffix("_raw") in PII_FIELDS)


AUDIENCE_SCHEMA: dict[str, pl.DataType] = {
    "segment": pl.String(),
    "contact_key": pl.String(),
    "email": pl.String(),
    "first_name": pl.String(),
    "last_name": pl.String(),
    "phone": pl.String(),
    "country": pl.String(),
    "consent_status": pl.String(),
    "consent_at": UTC_MICROS,
    "consent_event_id": pl.String(),  # the opt-in of ops/consent_events that decided
}
"""``gold/audience_members``: what every destination needs to address, greet and prove consent."""


# --- the catalogue ------------------------------------------------------------------------------
def _staged(role: str) -> Table:
    schema = staging_schema(role)
    return Table(
        STAGED[role],
        f"Staging log of the {role} role: valid canonical rows, one log row per record change.",
        schema,
        keys=("_record_hash", "_seq"),
        write="log",
        pii=pii_columns(list(schema)),
    )


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        *(_staged(role) for role in ROLES),
        Table(
            CONTACTS,
            "One row per person (normalised email) with current consent (SilverContact).",
            None,
            keys=("contact_key",),
            write="merge",
            pii=("email", "first_name", "last_name", "phone"),
            cluster_by=("contact_key",),
        ),
        Table(
            ORDERS,
            "The latest version of each order, linked by contact_key (SilverOrder).",
            None,
            keys=("order_id",),
            write="merge",
        ),
        Table(
            EVENTS,
            "One row per event id; contact_key when the person is known (SilverEvent).",
            None,
            keys=("event_id",),
            write="merge",
        ),
        Table(
            FEATURES,
            "One row per contact: the customer features; carries the transform state.",
            FEATURE_COLUMNS,
            keys=("contact_key",),
            write="merge",
            cluster_by=("contact_key",),
        ),
        Table(
            AUDIENCE,
            "Members of each segment whose current consent is an opt-in: what is published.",
            AUDIENCE_SCHEMA,
            keys=("segment", "contact_key"),
            write="merge",
            partition_by=("segment",),
            pii=("email", "first_name", "last_name", "phone"),
            cluster_by=("contact_key",),
        ),
        Table(
            HOLDOUTS,
            "Per member of an audience with a holdout: its keyed-hash position and whether it "
            "is in the control group (never sent). Built by the transform, read by the publish.",
            HOLDOUTS_SCHEMA,
            keys=("segment", "contact_key"),
            write="merge",
            partition_by=("segment",),
        ),
        Table(
            QUARANTINE,
            "Rows that failed a contract or could not be read: the rule, the column, the row "
            "with its identifiers masked and the source record id.",
            QUARANTINE_SCHEMA,
            keys=("quarantine_id",),
            write="append_once",
            masked=("value", "row"),
            retention_days=90,
            retention_column="quarantined_at",
        ),
        Table(
            VOLUME_METRICS,
            "Row counts per run, table, source and segment (the anomaly detector's series).",
            VOLUME_SCHEMA,
            keys=("run_id", "table", "source", "segment"),
            write="append_once",
            retention_days=400,
            retention_column="measured_at",
        ),
        Table(
            VOLUME_ALERTS,
            "Volume anomalies found, with the audiences they hold.",
            ALERT_SCHEMA,
            keys=("checked_run_id", "table", "source", "segment"),
            write="append_once",
            retention_days=400,
            retention_column="checked_at",
        ),
        Table(
            SOURCE_RUNS,
            "How each source's latest ingests ended (a failed one holds its audiences).",
            SOURCE_RUNS_SCHEMA,
            keys=("run_id", "source"),
            write="append_once",
            masked=("error",),
            retention_column="finished_at",
        ),
        Table(
            SYNC_LEDGER,
            "What each destination list last received per contact (latest send), by "
            "contact_key: the publish reads addresses from gold/audience_members when it sends.",
            LEDGER_SCHEMA,
            keys=tuple(LEDGER_KEYS),
            write="merge",
            masked=("error",),
            kept_because="current state: what each list holds and who unsubscribed",
        ),
        Table(
            SYNC_HISTORY,
            "Every send per contact (append-only): action, status, payload hash, run, and the "
            "Delta versions the publish read, so a past send can be re-read by time travel.",
            SYNC_HISTORY_SCHEMA,
            keys=("run_id", "destination", "audience", "contact_key", "synced_at"),
            write="append_once",
            masked=("error",),
            retention_column="synced_at",
        ),
        Table(
            PUBLISH_LEASES,
            "Claims on destination lists, so two publishes never send to one list at once.",
            LEASE_SCHEMA,
            keys=("lease_key", "seq"),
            write="conditional_append",
            kept_because="current state: which publish holds a list",
        ),
        Table(
            RUNS,
            "One row per flow run: trigger, parameters, Delta versions read and written, outcome.",
            RUNS_SCHEMA,
            keys=("flow_run_id",),
            write="merge",
            retention_column="started_at",
        ),
        Table(
            ERASURE_REQUESTS,
            "Erased people by contact_key: never staged, built or published again.",
            ERASURE_REQUEST_SCHEMA,
            keys=("contact_key",),
            write="insert_new",
            kept_because="the suppression list: an expired row would let an erased person back",
        ),
        Table(
            ERASURE_LOG,
            "Receipts of erasures: what was deleted where, and what each platform answered.",
            ERASURE_LOG_SCHEMA,
            keys=("request_id", "contact_key", "run_id"),
            write="append_once",
            kept_because="evidence: the proof that an erasure was done",
        ),
        Table(
            PLATFORM_SUPPRESSIONS,
            "Unsubscribes, bounces, cleaned addresses and spam complaints read back from each "
            "destination before a publish: consent evidence of its own source.",
            PLATFORM_SUPPRESSIONS_SCHEMA,
            keys=("destination", "audience", "email", "status", "occurred_at"),
            write="insert_new",
            pii=("email",),
            kept_because="consent evidence: an expired opt-out would stop counting",
        ),
        Table(
            CONSENT_EVENTS,
            "The consent ledger: one row per consent statement from any source, platform or "
            "erasure, append-only; current consent is a function of it.",
            CONSENT_EVENTS_SCHEMA,
            keys=("event_id",),
            write="insert_new",
            cluster_by=("contact_key",),  # the transform and `consent show` read by person
            kept_because="consent evidence: the ledger current consent is derived from",
        ),
    )
}
"""Every table with a fixed name. Bronze tables are per source: see :func:`bronze_entry`."""


def bronze_entry(
    source_name: str, source: SourceBase, *, write: WriteMode, keys: tuple[str, ...] = ()
) -> Table:
    """The catalogue entry of a source's bronze table (columns: the source's own).

    ``write`` is the source reader's mode (``merge`` on the primary key for entity sources,
    ``append_once`` per file, ``insert_new`` per event id). Its direct identifiers are the
    source columns its field mapping sends to a :data:`PII_FIELDS` field.
    """
    column, days = bronze_retention(source)
    return Table(
        bronze_table(source_name),
        f"What source {source_name!r} said, as it said it, plus ingest metadata.",
        None,
        keys=keys,
        write=write,
        pii=bronze_pii(source),
        retention_days=days,
        retention_column=column,
    )


def bronze_retention(source: SourceBase) -> tuple[str, int | None]:
    """(column deciding a row's age, default days) of a source's bronze table.

    Events age by when they happened (the source's ``occurred_at`` column; a backfill of old
    events does not keep them another 13 months) and expire after
    :data:`EVENTS_RETENTION_DAYS`. Every other role ages by :data:`INGESTED_AT` (a merged
    record gets a new one when the source changes it) and is kept by default: contacts,
    enrichment and orders are the people and their purchases, not a log.
    """
    if source.role == "events":
        return source.column("occurred_at"), EVENTS_RETENTION_DAYS
    return INGESTED_AT, None


def bronze_pii(source: SourceBase) -> tuple[str, ...]:
    """The source columns mapped to a :data:`PII_FIELDS` or :data:`MAY_QUOTE_PII` field."""
    required, optional = ROLE_FIELDS[source.role]
    identifying = (*PII_FIELDS, *MAY_QUOTE_PII)
    return tuple(source.column(f) for f in (*required, *optional) if f in identifying)


def table(name: str) -> Table:
    """The catalogue entry of ``name`` (a ``KeyError`` naming it if there is none)."""
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"{name!r} is not in the table catalogue (tasks.core.tables)") from None
