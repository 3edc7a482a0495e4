"""Audience diffing: which contacts a destination must receive, given what it already has.

The sync ledger (``ops/sync_ledger``) holds, per destination, audience and contact, the last
payload sent (its action and hash) and its result. A contact is sent again only when its payload
changed, its last send failed or never got an answer, or it opted out since; so a rerun on
unchanged data sends nothing.

A publish sends the plan in *windows* of platform batches (:func:`send_windows`) and records
each window in the ledger twice: as ``pending`` just before its requests go out (the intent,
one commit for the whole window) and with each contact's result once every batch of the window
has its answer (one commit, which also carries the next window's intent). A crash between the
two leaves the window ``pending``; the next run sends those contacts again (at most that one
window of W batches, which the platform applies as idempotent upserts), and treats a pending
subscribe as possibly on the list, so a contact who opts out meanwhile is still unsubscribed.

Opt-outs made at a platform (read back into ``bronze/platform_suppressions`` before each push,
see :mod:`tasks.readback`) win over our own consent when they are newer than it. A contact the
list itself reports as opted out is recorded as action ``suppressed``, status ``suppressed``
and sent nothing: the platform already holds the opt-out, and an unsubscribe call could only
fail on it (Mailchimp refuses to change a cleaned address). A contact who opted out at another
platform or list is unsubscribed here like any opt-out. Either way no subscribe or update goes
out for them; a ``suppressed`` row is settled, so later runs plan nothing for that person
until a newer opt-in than the platform's opt-out reaches gold.

Next to the payload hash, a subscribe's ledger row keeps ``field_hashes``: per field (and the
tags), a short keyed BLAKE2b hash of the value, with a key derived from the pepper
(:func:`field_hash`). The ledger never holds a value, yet the next plan can tell which fields
an update changes (:mod:`tasks.core.change_summary`). Rows from before the column have none.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Literal, get_args

import polars as pl

from tasks.core.normalise import UTC_MICROS, sha256_hex
from tasks.core.tables import LEDGER_KEYS as LEDGER_KEYS
from tasks.core.tables import LEDGER_SCHEMA as LEDGER_SCHEMA

SyncAction = Literal["subscribe", "unsubscribe", "remove", "holdout", "suppressed"]
"""What a payload asks the platform to do with one contact: ``subscribe`` adds or updates it
with its fields (an upsert: never a re-subscribe of a platform opt-out), ``unsubscribe`` records
an opt-out, ``remove`` takes it off the list (mirror mode; archived, not unsubscribed);
``holdout`` sends nothing and records that the contact is in the audience's control group;
``suppressed`` sends nothing and records that this list reported the contact as opted out
(unsubscribed, bounced, cleaned or a spam complaint) after their consent."""

SyncStatus = Literal["ok", "error", "pending", "holdout", "suppressed"]
"""A ledger row's result: the platform accepted it, refused it (sent again next run), the answer
was never recorded, (``holdout``) it was kept back as the audience's control group and never
sent, or (``suppressed``) the list holds the contact as opted out, so nothing was sent."""

RECORDED_ONLY: frozenset[SyncAction] = frozenset({"holdout", "suppressed"})
"""Actions written to the ledger without any platform call (their status is the action)."""

SETTLED = ("ok", "holdout", "suppressed")
"""Statuses after which an unchanged payload is not sent again."""

SyncMode = Literal["upsert", "mirror"]

SYNC_ACTIONS: tuple[SyncAction, ...] = get_args(SyncAction)

NEVER_HELD: frozenset[SyncAction] = frozenset({"unsubscribe", "suppressed"})
"""Actions a publish hold never delays: an opt-out is a legal obligation, not a marketing choice
(and recording a platform's own opt-out sends nothing).

Holds (volume anomalies, quarantine share, large removals, a failed suppression read) delay
subscribes and updates only. An erasure action, when destinations get one, belongs here too.
"""

OPT_IN = "subscribed"
OPT_OUT = "unsubscribed"


PLAN_SCHEMA: dict[str, pl.DataType] = {
    "contact_key": pl.String(),
    "email": pl.String(),
    "action": pl.String(),
    "payload": pl.String(),
    "payload_hash": pl.String(),
}
"""A plan row: ``payload`` is the JSON the platform gets (:func:`tasks.core.mapping.payload_expr`)
for a subscribe, empty for the other actions."""

TAGS_FIELD = "(tags)"
"""The name under which a payload's tags are hashed next to its fields."""
FIELD_HASH_BYTES = 8

ACTION_ORDER = {"unsubscribe": 0, "suppressed": 1, "remove": 2, "subscribe": 3, "holdout": 4}
"""Plan order: opt-outs first, so a batch limit or a crash never leaves them behind the rest."""

ON_LIST_ACTIONS = ("subscribe",)
"""Last actions after which the platform may hold the contact on the list (sent, refused as an
update, or pending without an answer)."""


def field_hash_key(pepper: bytes) -> bytes:
    """The key of :func:`field_hash`, derived from the contact-key pepper (never the pepper
    itself, so a field hash can never be mistaken for, or help compute, a contact key)."""
    return hmac.new(pepper, b"audience-lake sync_ledger field hashes", hashlib.sha256).digest()


def field_hash(key: bytes, contact_key: str, name: str, value: object) -> str:
    """Short keyed hash (BLAKE2b in its keyed mode, a MAC) of one field's value for one contact:
    equal values give equal hashes, and the ledger, which keeps only this, never holds the
    value itself, nor can anyone without the key test a guess against it."""
    return _field_hasher(key)(contact_key, name, value)


def _field_hasher(key: bytes) -> Callable[[str, str, object], str]:
    def digest(contact_key: str, name: str, value: object) -> str:
        message = f"{contact_key}\x1f{name}\x1f{json.dumps(value)}".encode()
        return hashlib.blake2b(message, key=key, digest_size=FIELD_HASH_BYTES).hexdigest()

    return digest


def payload_field_hashes(key: bytes, contact_key: str, payload: str | None) -> str | None:
    """``{field: field_hash}`` as JSON for one payload (its tags as :data:`TAGS_FIELD`)."""
    return _payload_hashes(_field_hasher(key), contact_key, payload)


def _payload_hashes(
    digest: Callable[[str, str, object], str], contact_key: str, payload: str | None
) -> str | None:
    if not payload:
        return None
    decoded = json.loads(payload)
    values: dict[str, object] = dict(decoded.get("fields") or {})
    values[TAGS_FIELD] = sorted(decoded.get("tags") or [])
    return json.dumps({name: digest(contact_key, name, v) for name, v in sorted(values.items())})


def with_field_hashes(plan: pl.DataFrame, key: bytes) -> pl.DataFrame:
    """``plan`` with ``field_hashes``: each subscribe's keyed field hashes (:func:`field_hash`),
    null for the other actions. Computed for rows being sent or shown only (a batch, a dry
    run), so the cost follows the change, not the audience."""
    digest = _field_hasher(key)
    rows = plan.select("contact_key", "action", "payload").iter_rows()
    hashes = [_payload_hashes(digest, k, p) if a == "subscribe" else None for k, a, p in rows]
    return plan.with_columns(pl.Series("field_hashes", hashes, dtype=pl.String()))


def _with_payload_hash(lf: pl.LazyFrame) -> pl.LazyFrame:
    payload = pl.concat_str(
        [pl.col("action"), pl.col("email"), pl.col("payload").fill_null("")], separator="\x1f"
    )
    return lf.with_columns(sha256_hex(payload).alias("payload_hash"))


def _without_payload(action: str) -> list[pl.Expr]:
    """Plan columns for an action that carries no fields (unsubscribe, remove, holdout)."""
    return [
        pl.col("contact_key"),
        pl.col("email"),
        pl.lit(action).alias("action"),
        pl.lit(None, pl.String).alias("payload"),
    ]


def _default_payload(members: pl.LazyFrame) -> pl.LazyFrame:
    """Members without a mapped ``payload`` column carry their first and last name."""
    if "payload" in members.collect_schema().names():
        return members
    names = pl.struct(pl.col("first_name").cast(pl.String), pl.col("last_name").cast(pl.String))
    payload = pl.concat_str(
        [pl.lit('{"fields":'), names.struct.json_encode(), pl.lit(',"tags":[]}')]
    )
    return members.with_columns(payload.alias("payload"))


PLATFORM_OPT_OUT_SCHEMA: dict[str, pl.DataType] = {"contact_key": pl.String(), "here": pl.Boolean()}
"""Contacts with a platform opt-out newer than their consent; ``here``: reported by the list
being planned (see :func:`tasks.readback.platform_opt_outs`)."""


def plan_sync(
    members: pl.LazyFrame,
    contacts: pl.LazyFrame,
    ledger: pl.LazyFrame,
    *,
    destination: str,
    audience: str,
    mode: SyncMode = "upsert",
    platform_opt_outs: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """Rows to send for one audience: ``contact_key, email, action, payload, payload_hash``.

    ``members`` are the segment's rows with a ``payload`` (the mapped fields; without one, the
    first and last name) and optionally a boolean ``holdout``. ``platform_opt_outs`` (columns
    of :data:`PLATFORM_OPT_OUT_SCHEMA`) are contacts who opted out at a platform after their
    consent: they are never subscribed or updated, whatever ``contacts`` says.

    - ``subscribe`` for members outside the holdout whose *current* consent (in ``contacts``) is
      an opt-in and that are new, changed (their payload hash differs), or whose last send
      failed or is still pending; a member row whose contact is not opted in is never
      subscribed (consent fails closed, even on stale members);
    - ``unsubscribe`` for contacts whose current consent is an opt-out, or who opted out at
      another platform or list, and that the platform may hold: their last action was a
      subscribe (accepted, refused as an update, or pending) or a remove, or their last
      unsubscribe did not succeed;
    - ``suppressed`` for members (or contacts the ledger knows) whom this list reports as opted
      out, unless the ledger already has them unsubscribed: recorded, never sent;
    - ``remove`` (``mode="mirror"`` only) for contacts the platform may hold that are no longer
      sendable members (left the segment, or moved into the holdout) and did not opt out;
    - ``holdout`` for holdout members the platform does not hold: recorded, never sent. A
      holdout member sent before the holdout existed stays (upsert) or is removed (mirror).

    Unsubscribes come first, then suppressions and removals, then subscribes and holdout records.
    """
    previous = ledger.filter(
        (pl.col("destination") == destination) & (pl.col("audience") == audience)
    ).select(
        "contact_key",
        pl.col("action").alias("prev_action"),
        pl.col("payload_hash").alias("prev_hash"),
        pl.col("status").alias("prev_status"),
    )
    opt_outs = (
        pl.LazyFrame(schema=PLATFORM_OPT_OUT_SCHEMA)
        if platform_opt_outs is None
        else platform_opt_outs.group_by("contact_key").agg(pl.col("here").any())
    )
    here = opt_outs.filter(pl.col("here")).select("contact_key")
    members = _default_payload(members)
    if "holdout" not in members.collect_schema().names():
        members = members.with_columns(pl.lit(False).alias("holdout"))
    opted_in = (
        contacts.filter(pl.col("consent_status") == OPT_IN)
        .select("contact_key")
        .join(opt_outs, on="contact_key", how="anti")
    )
    eligible = members.join(opted_in, on="contact_key", how="semi")
    sendable = eligible.filter(~pl.col("holdout"))
    subscribes = sendable.select(
        "contact_key", "email", pl.lit("subscribe").alias("action"), pl.col("payload")
    )
    may_hold = (pl.col("prev_action").is_in(ON_LIST_ACTIONS)) | (
        pl.col("prev_action").is_in(["unsubscribe", "remove"]) & (pl.col("prev_status") != "ok")
    )
    unsubscribe_due = may_hold | (pl.col("prev_action") == "remove")
    addresses = contacts.select("contact_key", "email")
    opted_out_keys = pl.concat(
        [contacts.filter(pl.col("consent_status") == OPT_OUT).select("contact_key"),
         opt_outs.select("contact_key")]
    ).unique()  # fmt: skip
    opted_out = opted_out_keys.join(addresses, on="contact_key", how="inner")
    unsubscribes = (
        previous.filter(unsubscribe_due)
        .select("contact_key")
        .join(opted_out, on="contact_key", how="inner")
        .join(here, on="contact_key", how="anti")
        .select(*_without_payload("unsubscribe"))
    )
    already_out = previous.filter(
        (pl.col("prev_action") == "unsubscribe") & (pl.col("prev_status") == "ok")
    ).select("contact_key")
    known = pl.concat([members.select("contact_key"), previous.select("contact_key")]).unique()
    suppressed = (
        here.join(known, on="contact_key", how="semi")
        .join(already_out, on="contact_key", how="anti")
        .join(addresses, on="contact_key", how="inner")
        .select(*_without_payload("suppressed"))
    )
    holdouts = (
        eligible.filter(pl.col("holdout"))
        .join(previous, on="contact_key", how="left")
        .filter(~pl.col("prev_action").is_in(ON_LIST_ACTIONS).fill_null(False))
        .select(*_without_payload("holdout"))
    )
    parts = [subscribes, unsubscribes, suppressed, holdouts]
    if mode == "mirror":
        still = sendable.select("contact_key")
        removes = (
            previous.filter(may_hold & (pl.col("prev_action") != "unsubscribe"))
            .select("contact_key")
            .join(still, on="contact_key", how="anti")
            .join(opted_out.select("contact_key"), on="contact_key", how="anti")
            .join(addresses, on="contact_key", how="inner")
            .select(*_without_payload("remove"))
        )
        parts.append(removes)
    candidates = _with_payload_hash(pl.concat([p.cast({"payload": pl.String}) for p in parts]))
    changed = (
        pl.col("prev_hash").is_null()
        | (pl.col("prev_hash") != pl.col("payload_hash"))
        | ~pl.col("prev_status").is_in(SETTLED)
    )
    return (
        candidates.join(previous, on="contact_key", how="left")
        .filter(changed)
        .select(list(PLAN_SCHEMA))
        .sort(pl.col("action").replace_strict(ACTION_ORDER, return_dtype=pl.Int8), "contact_key")
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
    """``plan`` in the platform's batch size, in plan order (unsubscribes first); a batch holds
    one action only, since each action is its own platform call."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    # partition_by, not iterating a group_by: the same groups in the same order, and an order of
    # magnitude cheaper on the small plans of a frequent sync.
    for group in plan.partition_by("action", maintain_order=True):
        for start in range(0, group.height, size):
            yield group.slice(start, size)


def send_windows(batches: Iterable[pl.DataFrame], size: int) -> Iterator[list[pl.DataFrame]]:
    """Consecutive ``batches`` grouped ``size`` at a time, in order; a window never mixes
    actions, so every unsubscribe window is answered and recorded before a removal or a
    subscribe window is sent."""
    if size < 1:
        raise ValueError(f"window size must be at least 1, got {size}")
    window: list[pl.DataFrame] = []
    for batch in batches:
        if window and (len(window) >= size or batch["action"][0] != window[0]["action"][0]):
            yield window
            window = []
        window.append(batch)
    if window:
        yield window


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

    A batch that went through :func:`with_field_hashes` also records each subscribe's
    ``field_hashes``, from which a later plan tells which fields an update changes.

    ``errors=None`` records the intent (every row ``pending``, written before the request);
    otherwise ``errors`` maps each contact key of the batch to the platform's error for it, or
    ``None`` when it was accepted (``ok``).
    """
    if "field_hashes" not in batch.columns:
        batch = batch.with_columns(pl.lit(None, pl.String).alias("field_hashes"))
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
        status = (
            pl.when(pl.col("error").is_not_null())
            .then(pl.lit("error"))
            .when(pl.col("action").is_in(sorted(RECORDED_ONLY)))
            .then(pl.col("action"))
            .otherwise(pl.lit("ok"))
        )
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
        "field_hashes",
    ).cast(LEDGER_SCHEMA)  # type: ignore[arg-type]
