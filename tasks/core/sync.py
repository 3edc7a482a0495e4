"""Audience diffing: which contacts a destination must receive, given what it already has.

The sync ledger (``ops/sync_ledger``) holds, per destination, audience and contact, the last
payload sent (its action and hash) and its result. A contact is sent again only when its payload
changed, its last send failed or never got an answer, or it opted out since; so a rerun on
unchanged data sends nothing.

A publish records each platform batch in the ledger twice: as ``pending`` just before the
request (the intent) and with each contact's result right after it. A crash between the two
leaves the batch ``pending``; the next run sends those contacts again (at most that one batch,
which the platform applies as an idempotent upsert), and treats a pending subscribe as
possibly on the list, so a contact who opts out meanwhile is still unsubscribed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Literal, get_args

import polars as pl

from tasks.core.normalise import UTC_MICROS, sha256_hex
from tasks.core.tables import LEDGER_KEYS as LEDGER_KEYS
from tasks.core.tables import LEDGER_SCHEMA as LEDGER_SCHEMA

SyncAction = Literal["subscribe", "unsubscribe"]
"""What a payload asks the platform to do with one contact."""

SyncStatus = Literal["ok", "error", "pending"]
"""A ledger row's result: the platform accepted it, refused it, or the answer was never recorded."""

SYNC_ACTIONS: tuple[SyncAction, ...] = get_args(SyncAction)

NEVER_HELD: frozenset[SyncAction] = frozenset({"unsubscribe"})
"""Actions a publish hold never delays: an opt-out is a legal obligation, not a marketing choice.

Holds (volume anomalies, quarantine share, large removals) delay subscribes and updates only.
An erasure action, when destinations get one, belongs here too.
"""

OPT_IN = "subscribed"
OPT_OUT = "unsubscribed"


PLAN_SCHEMA: dict[str, pl.DataType] = {
    "contact_key": pl.String(),
    "email": pl.String(),
    "action": pl.String(),
    "first_name": pl.String(),
    "last_name": pl.String(),
    "payload_hash": pl.String(),
}


def _with_payload_hash(lf: pl.LazyFrame) -> pl.LazyFrame:
    payload = pl.concat_str(
        [
            pl.col("action"),
            pl.col("email"),
            pl.col("first_name").fill_null(""),
            pl.col("last_name").fill_null(""),
        ],
        separator="\x1f",
    )
    return lf.with_columns(sha256_hex(payload).alias("payload_hash"))


def plan_sync(
    members: pl.LazyFrame,
    contacts: pl.LazyFrame,
    ledger: pl.LazyFrame,
    *,
    destination: str,
    audience: str,
) -> pl.LazyFrame:
    """Rows to send for one audience: ``contact_key, email, action, names, payload_hash``.

    - ``subscribe`` for members whose *current* consent (in ``contacts``) is an opt-in and that
      are new, changed, or whose last send failed or is still pending; a member row whose
      contact is not opted in is never subscribed (consent fails closed, even on stale members);
    - ``unsubscribe`` for contacts whose current consent is an opt-out and that the platform may
      hold as subscribed: their last payload was a subscribe (accepted, refused as an update, or
      pending without an answer), or their last unsubscribe did not succeed.

    Unsubscribes come first, so a batch limit or a crash never leaves them behind subscribes.
    """
    previous = ledger.filter(
        (pl.col("destination") == destination) & (pl.col("audience") == audience)
    ).select(
        "contact_key",
        pl.col("action").alias("prev_action"),
        pl.col("payload_hash").alias("prev_hash"),
        pl.col("status").alias("prev_status"),
    )
    opted_in = contacts.filter(pl.col("consent_status") == OPT_IN).select("contact_key")
    subscribes = _with_payload_hash(
        members.join(opted_in, on="contact_key", how="semi").select(
            "contact_key",
            "email",
            pl.lit("subscribe").alias("action"),
            pl.col("first_name").cast(pl.String),
            pl.col("last_name").cast(pl.String),
        )
    )
    opted_out = contacts.filter(pl.col("consent_status") == OPT_OUT).select("contact_key", "email")
    unsubscribes = _with_payload_hash(
        previous.filter(
            (pl.col("prev_action") == "subscribe")
            | (pl.col("prev_action") == "unsubscribe") & (pl.col("prev_status") != "ok")
        )
        .select("contact_key")
        .join(opted_out, on="contact_key", how="inner")
        .select(
            "contact_key",
            "email",
            pl.lit("unsubscribe").alias("action"),
            pl.lit(None, pl.String).alias("first_name"),
            pl.lit(None, pl.String).alias("last_name"),
        )
    )
    candidates = pl.concat([subscribes, unsubscribes])
    changed = (
        pl.col("prev_hash").is_null()
        | (pl.col("prev_hash") != pl.col("payload_hash"))
        | (pl.col("prev_status") != "ok")
    )
    return (
        candidates.join(previous, on="contact_key", how="left")
        .filter(changed)
        .select(list(PLAN_SCHEMA))
        .sort(pl.col("action") != "unsubscribe", "contact_key")
    )


def releasable(plan: pl.LazyFrame, *, held: bool, dry_run: bool) -> pl.LazyFrame:
    """The part of ``plan`` that may be sent now.

    A dry run sends nothing; a held audience sends only the actions in :data:`NEVER_HELD`
    (unsubscribes); otherwise the whole plan goes.
    """
    if dry_run:
        return plan.head(0)
    if held:
        return plan.filter(pl.col("action").is_in(sorted(NEVER_HELD)))
    return plan


def platform_batches(plan: pl.DataFrame, size: int) -> Iterator[pl.DataFrame]:
    """``plan`` in the platform's batch size, in plan order (unsubscribes first)."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    for start in range(0, plan.height, size):
        yield plan.slice(start, size)


def ledger_rows(
    batch: pl.DataFrame,
    *,
    destination: str,
    audience: str,
    segment: str,
    run_id: str,
    synced_at: datetime,
    errors: Mapping[str, str | None] | None,
) -> pl.DataFrame:
    """Ledger rows for one platform batch of plan rows.

    ``errors=None`` records the intent (every row ``pending``, written before the request);
    otherwise ``errors`` maps each contact key of the batch to the platform's error for it, or
    ``None`` when it was accepted (``ok``).
    """
    if errors is None:
        status = pl.lit("pending")
        error = pl.lit(None, pl.String)
    else:
        missing = set(batch["contact_key"]) - set(errors)
        if missing:
            raise ValueError(f"no result for {len(missing)} contact(s) of the batch")
        results = pl.DataFrame(
            {"contact_key": list(errors), "error": list(errors.values())},
            schema={"contact_key": pl.String(), "error": pl.String()},
        )
        batch = batch.join(results, on="contact_key", how="left")
        status = pl.when(pl.col("error").is_null()).then(pl.lit("ok")).otherwise(pl.lit("error"))
        error = pl.col("error")
    return batch.select(
        pl.lit(destination).alias("destination"),
        pl.lit(audience).alias("audience"),
        pl.lit(segment).alias("segment"),
        "contact_key",
        "action",
        "payload_hash",
        status.alias("status"),
        error.alias("error"),
        pl.lit(run_id).alias("run_id"),
        pl.lit(synced_at).cast(UTC_MICROS).alias("synced_at"),
    ).cast(LEDGER_SCHEMA)  # type: ignore[arg-type]
