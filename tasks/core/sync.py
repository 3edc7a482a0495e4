"""Audience diffing: which contacts a destination must receive, given what it already has.

The sync ledger (``ops/sync_ledger``) holds, per destination, audience and contact, the hash
of the last payload sent and its result. A contact is sent again only when its payload changed,
its last send failed, or it opted out since; so a rerun on unchanged data sends nothing.
"""

from __future__ import annotations

import polars as pl

from tasks.core.normalise import UTC_MICROS, sha256_hex

LEDGER_SCHEMA: dict[str, pl.DataType] = {
    "destination": pl.String(),
    "audience": pl.String(),
    "segment": pl.String(),
    "contact_key": pl.String(),
    "action": pl.String(),  # subscribe | unsubscribe
    "payload_hash": pl.String(),
    "status": pl.String(),  # ok | error
    "error": pl.String(),
    "run_id": pl.String(),
    "synced_at": UTC_MICROS,
}
LEDGER_KEYS = ["destination", "audience", "contact_key"]

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

    - ``subscribe`` for members that are new, changed, or whose last send failed;
    - ``unsubscribe`` for contacts the destination last received as subscribed (or whose
      unsubscribe failed) whose current consent is an opt-out.
    """
    previous = ledger.filter(
        (pl.col("destination") == destination) & (pl.col("audience") == audience)
    ).select(
        "contact_key",
        pl.col("action").alias("prev_action"),
        pl.col("payload_hash").alias("prev_hash"),
        pl.col("status").alias("prev_status"),
    )
    subscribes = _with_payload_hash(
        members.select(
            "contact_key",
            "email",
            pl.lit("subscribe").alias("action"),
            pl.col("first_name").cast(pl.String),
            pl.col("last_name").cast(pl.String),
        )
    )
    opted_out = contacts.filter(pl.col("consent_status") == "unsubscribed").select(
        "contact_key", "email"
    )
    unsubscribes = _with_payload_hash(
        previous.filter(
            (pl.col("prev_action") == "subscribe") & (pl.col("prev_status") == "ok")
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
        .sort("action", "contact_key")
    )
