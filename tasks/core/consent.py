"""The consent ledger: statements of consent, and the decision they lead to.

``ops/consent_events`` holds one row per consent statement, append-only, by ``contact_key``:

- **source statements**: what a contact source's record says (``opted_out`` beats ``opted_in``
  in the same record; an opt-in occurs at ``opted_in_at``, else at the record's
  ``updated_at``; an opt-out at ``updated_at``). A record is an ongoing statement: when it
  changes what it says, a new row *supersedes* the previous one of that record (``supersedes``
  holds its event id); when it stops stating consent for the person (the flag was cleared, the
  record was deleted, its email changed) a ``withdrawn`` row supersedes it, so a statement the
  source no longer makes stops counting. Nothing is ever updated or deleted to say so;
- **platform suppressions**: an unsubscribe, bounce, cleaned address or spam complaint read back
  from a destination, an opt-out of source ``platform:<destination>``;
- **erasure requests**: an opt-out of source ``erasure``.

Current consent (:func:`decide`) is a pure function of the ledger: among the statements in force
(not superseded, not withdrawn), the newest wins and an opt-out wins a tie; no statement means
``unknown``, which is never published. ``event_id`` is a hash of the statement (contact key,
source, record id, status, time and the event it supersedes), so recording the same statement
twice, by a rerun or a full refresh, adds nothing.

Lawful basis and evidence describe a statement but are not part of its identity: an opt-in's
lawful basis is the source's ``lawful_basis`` field (``consent`` when unmapped), and its evidence
adds the optional ``consent_form_id``, ``double_opt_in_at``, ``consent_wording_version`` and
``ip_hash`` (a keyed hash of ``consent_ip``, never the address itself) when the record has them.
Mapping these fields later neither changes the ids of recorded events nor records the same
statement again; the evidence is that of the first recording of each statement.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import polars as pl

from tasks.core.masking import mask_emails_expr
from tasks.core.normalise import (
    UTC_MICROS,
    contact_key,
    is_valid_email,
    keyed_hash,
    normalise_email,
    sha256_hex,
)
from tasks.core.tables import CONSENT_EVENTS_SCHEMA

ConsentStatus = Literal["opt-in", "opt-out", "withdrawn"]
OPT_IN: ConsentStatus = "opt-in"
OPT_OUT: ConsentStatus = "opt-out"
WITHDRAWN: ConsentStatus = "withdrawn"
CHANNEL = "email"
ERASURE_SOURCE = "erasure"
PLATFORM_PREFIX = "platform:"

STATEMENT_COLUMNS = (
    "contact_key",
    "source",
    "source_record_id",
    "status",
    "lawful_basis",
    "evidence",
    "occurred_at",
)
"""A statement before it is recorded (no id, no recording time, no run)."""
HEAD_COLUMNS = ("contact_key", "source", "source_record_id", "event_id", "status", "occurred_at")
DECISION_SCHEMA: dict[str, pl.DataType] = {
    "contact_key": pl.String(),
    "consent_status": pl.String(),
    "consent_at": UTC_MICROS,
    "consent_source": pl.String(),
    "consent_event_id": pl.String(),
}
"""What silver carries of the ledger: the decision and the event that decided it."""
_ISO = "%Y-%m-%dT%H:%M:%S%.6fZ"
_RECORD = ["contact_key", "source", "source_record_id"]


def _iso(column: str) -> pl.Expr:
    return pl.col(column).dt.convert_time_zone("UTC").dt.to_string(_ISO)


def _is_external(source: pl.Expr) -> pl.Expr:
    """Platform and erasure statements: single events, never superseded or withdrawn."""
    return source.str.starts_with(PLATFORM_PREFIX) | (source == ERASURE_SOURCE)


def event_id(supersedes: pl.Expr | None = None) -> pl.Expr:
    """The deterministic id of a statement: SHA-256 of its contact key, source, record id,
    status, time (ISO, UTC) and, for a statement that replaces an earlier one of its record,
    that one's id."""
    parts = [
        pl.col("contact_key"),
        pl.col("source"),
        pl.col("source_record_id").fill_null(""),
        pl.col("status"),
        _iso("occurred_at").fill_null(""),
    ]
    if supersedes is not None:
        parts.append(supersedes.fill_null(""))
    return sha256_hex(pl.concat_str(parts, separator="\x1f"))


# --- statements -----------------------------------------------------------------------------
def source_statements(contacts: pl.LazyFrame, *, pepper: bytes, key_version: int) -> pl.LazyFrame:
    """The statement each contact row makes (rows stating nothing make none), one per record.

    ``contacts`` are staged contact rows (canonical columns; a source may map none of the
    consent fields), with their ``contact_key`` if the caller has it already (it is computed
    from the email otherwise). Evidence keeps the consent fields as the source stated them and the
    record's modification time. A record delivered twice keeps the statement the decision
    would pick (newest, opt-out on a tie).
    """
    present = set(contacts.collect_schema().names())

    def field(name: str, dtype: pl.DataType) -> pl.Expr:
        return (pl.col(name) if name in present else pl.lit(None)).cast(dtype).alias(name)

    key = (
        pl.col("contact_key")
        if "contact_key" in present
        else contact_key(pl.col("email"), pepper=pepper, version=key_version)
    )
    rows = contacts.select(
        key.alias("contact_key"),
        "_source",
        pl.col("source_id").cast(pl.String),
        pl.col("updated_at").cast(UTC_MICROS),
        field("opted_in", pl.Boolean()),
        field("opted_in_at", UTC_MICROS),
        field("opted_out", pl.Boolean()),
        field("lawful_basis", pl.String()),
        field("consent_form_id", pl.String()),
        field("double_opt_in_at", UTC_MICROS),
        field("consent_wording_version", pl.String()),
        keyed_hash(field("consent_ip", pl.String()), pepper=pepper, version=key_version).alias(
            "ip_hash"
        ),
    )
    status = (
        pl.when(pl.col("opted_out").fill_null(False))
        .then(pl.lit(OPT_OUT))
        .when(pl.col("opted_in").fill_null(False))
        .then(pl.lit(OPT_IN))
        .otherwise(None)
    )
    occurred = (
        pl.when(status == OPT_IN)
        .then(pl.coalesce("opted_in_at", "updated_at"))
        .otherwise(pl.col("updated_at"))
    )
    evidence = _with_present(
        pl.struct(
            pl.col("opted_in"),
            _iso("opted_in_at").alias("opted_in_at"),
            pl.col("opted_out"),
            _iso("updated_at").alias("record_updated_at"),
        ).struct.json_encode(),
        pl.col("consent_form_id"),
        _iso("double_opt_in_at").alias("double_opt_in_at"),
        pl.col("consent_wording_version"),
        pl.col("ip_hash"),
    )
    statements = rows.select(
        "contact_key",
        pl.col("_source").alias("source"),
        pl.col("source_id").alias("source_record_id"),
        status.alias("status"),
        pl.when(status == OPT_IN)
        .then(pl.coalesce("lawful_basis", pl.lit("consent")))
        .alias("lawful_basis"),
        evidence.alias("evidence"),
        occurred.cast(UTC_MICROS).alias("occurred_at"),
    ).filter(pl.col("status").is_not_null())
    return _strongest(statements, by=_RECORD).select(STATEMENT_COLUMNS)


def _with_present(evidence: pl.Expr, *extra: pl.Expr) -> pl.Expr:
    """``evidence`` (a JSON object) with each of ``extra`` added under its name when not null,
    so a record that documents nothing more has the evidence it had before these fields."""
    members = [
        pl.when(e.is_not_null()).then(
            pl.lit(",")
            + pl.struct(e).struct.json_encode().str.strip_prefix("{").str.strip_suffix("}")
        )
        for e in extra
    ]
    return pl.concat_str([evidence.str.strip_suffix("}"), *members, pl.lit("}")], ignore_nulls=True)


def platform_statements(
    suppressions: pl.LazyFrame, *, pepper: bytes, key_version: int
) -> pl.LazyFrame:
    """One opt-out per row of ``bronze/platform_suppressions`` whose email is an address.

    Source ``platform:<destination>``, record id the platform's own (an address in it masked);
    evidence: the platform's
    status (unsubscribed, bounced, ...), the list it came from and the platform kind.
    """
    address = normalise_email(pl.col("email"))
    return suppressions.filter(is_valid_email(address).fill_null(False)).select(
        contact_key(address, pepper=pepper, version=key_version).alias("contact_key"),
        (pl.lit(PLATFORM_PREFIX) + pl.col("destination")).alias("source"),
        # No address in the ledger, even if a platform's record id quotes one.
        mask_emails_expr(pl.col("platform_record_id")).alias("source_record_id"),
        pl.lit(OPT_OUT).alias("status"),
        pl.lit(None, pl.String).alias("lawful_basis"),
        pl.struct("status", "audience", "platform").struct.json_encode().alias("evidence"),
        pl.coalesce("occurred_at", "read_at").cast(UTC_MICROS).alias("occurred_at"),
    )


def erasure_statements(requests: pl.LazyFrame) -> pl.LazyFrame:
    """One opt-out per erasure request (``ops/erasure_requests``): never published again."""
    return requests.select(
        "contact_key",
        pl.lit(ERASURE_SOURCE).alias("source"),
        pl.col("request_id").alias("source_record_id"),
        pl.lit(OPT_OUT).alias("status"),
        pl.lit(None, pl.String).alias("lawful_basis"),
        pl.struct("request_id").struct.json_encode().alias("evidence"),
        pl.col("requested_at").cast(UTC_MICROS).alias("occurred_at"),
    )


# --- recording ------------------------------------------------------------------------------
def heads(ledger: pl.LazyFrame) -> pl.LazyFrame:
    """The newest row of each source record's chain for each person (not superseded)."""
    replaced = ledger.select(pl.col("supersedes").alias("event_id")).drop_nulls()
    return ledger.join(replaced, on="event_id", how="anti").select(HEAD_COLUMNS)


def source_events(
    statements: pl.LazyFrame, current: pl.LazyFrame, *, now: datetime
) -> pl.LazyFrame:
    """What to append so the ledger's source records say what ``statements`` say.

    ``current`` are the :func:`heads` of the people concerned. A statement that differs from its
    record's head (or has none) is appended, superseding the head; a head still in force that no
    statement repeats (the record stopped saying it) is withdrawn as of ``now``. Platform and
    erasure heads are left alone.
    """
    own = current.filter(~_is_external(pl.col("source"))).rename(
        {"event_id": "_head", "status": "_head_status", "occurred_at": "_head_at"}
    )
    joined = statements.join(own, on=_RECORD, how="full", coalesce=True, nulls_equal=True)
    same = (pl.col("status") == pl.col("_head_status")) & (
        pl.col("occurred_at") == pl.col("_head_at")
    )
    new = joined.filter(pl.col("status").is_not_null() & ~same.fill_null(False))
    gone = joined.filter(pl.col("status").is_null() & (pl.col("_head_status") != WITHDRAWN))
    withdrawn = gone.with_columns(
        pl.lit(WITHDRAWN).alias("status"),
        pl.lit(None, pl.String).alias("lawful_basis"),
        pl.lit(None, pl.String).alias("evidence"),
        pl.lit(now).cast(UTC_MICROS).alias("occurred_at"),
    )
    return pl.concat([new, withdrawn], how="vertical_relaxed").select(
        *STATEMENT_COLUMNS, pl.col("_head").alias("supersedes")
    )


def ledger_rows(statements: pl.LazyFrame, *, now: datetime, run_id: str) -> pl.LazyFrame:
    """Statements as ledger rows: id, channel, recording time and run (``supersedes`` kept when
    present, else null), in the catalogue's column order."""
    names = statements.collect_schema().names()
    supersedes = pl.col("supersedes") if "supersedes" in names else pl.lit(None, pl.String)
    return (
        statements.with_columns(supersedes.cast(pl.String).alias("supersedes"))
        .with_columns(
            event_id(pl.col("supersedes")).alias("event_id"),
            pl.lit(CHANNEL).alias("channel"),
            pl.lit(now).cast(UTC_MICROS).alias("recorded_at"),
            pl.lit(run_id).alias("run_id"),
        )
        .select([pl.col(n).cast(t) for n, t in CONSENT_EVENTS_SCHEMA.items()])
        .unique("event_id", keep="first", maintain_order=True)
    )


# --- deciding -------------------------------------------------------------------------------
def _strongest(frame: pl.LazyFrame, *, by: list[str]) -> pl.LazyFrame:
    """Per group, the statement that wins: newest ``occurred_at``, then opt-out, then source,
    then event id (when present), so ties resolve the same way on every run."""
    ties = [c for c in ("source", "event_id") if c in frame.collect_schema().names()]
    ordered = [c for c in ties if c not in by]
    return (
        frame.with_columns((pl.col("status") == OPT_IN).alias("_is_optin"))
        .sort(
            [*by, "occurred_at", "_is_optin", *ordered],
            descending=[*([False] * len(by)), True, False, *([False] * len(ordered))],
            nulls_last=True,
            maintain_order=True,
        )
        .unique(subset=by, keep="first", maintain_order=True)
        .drop("_is_optin")
    )


def decide(ledger: pl.LazyFrame) -> pl.LazyFrame:
    """Current consent per contact key, from the ledger rows of the people concerned.

    Statements in force are the chain heads that are not withdrawn; the newest wins, an opt-out
    wins a tie. ``consent_status`` is ``subscribed`` or ``unsubscribed`` (people without a
    statement are absent here: ``unknown``); ``consent_event_id`` names the deciding event.
    """
    in_force = ledger.pipe(heads).filter(pl.col("status") != WITHDRAWN)
    return (
        _strongest(in_force, by=["contact_key"])
        .select(
            "contact_key",
            pl.when(pl.col("status") == OPT_IN)
            .then(pl.lit("subscribed"))
            .otherwise(pl.lit("unsubscribed"))
            .alias("consent_status"),
            pl.col("occurred_at").alias("consent_at"),
            pl.col("source").alias("consent_source"),
            pl.col("event_id").alias("consent_event_id"),
        )
        .select([pl.col(n).cast(t) for n, t in DECISION_SCHEMA.items()])
    )


def history(ledger: pl.LazyFrame, key: str) -> pl.LazyFrame:
    """One person's ledger rows, oldest first, with whether each is still in force."""
    rows = ledger.filter(pl.col("contact_key") == key)
    live = heads(rows).filter(pl.col("status") != WITHDRAWN).select("event_id")
    return (
        rows.join(live.with_columns(pl.lit(True).alias("in_force")), on="event_id", how="left")
        .with_columns(pl.col("in_force").fill_null(False))
        .sort("occurred_at", "recorded_at", "event_id", nulls_last=True)
    )
