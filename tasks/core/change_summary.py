"""What a publish will change, in a marketer's words: creates, updates, removals, unsubscribes.

A plan (:func:`tasks.core.sync.plan_sync`) says per contact *what to send*; read against the
sync ledger it also says *what that changes* on the platform:

- ``create``: a subscribe for a contact the list never received, or one it last removed,
  unsubscribed or held out;
- ``update``: a subscribe for a contact last sent as a subscribe; its ``changed_fields`` are the
  fields whose keyed hash (:func:`tasks.core.sync.field_hash`) differs from the ledger's. A
  ledger row written before field hashes existed gives ``None`` (fields unknown); an update
  whose fields all match is a resend (its last send failed or was never answered);
- ``unsubscribe``, ``remove`` and ``holdout`` as planned.

:func:`summarise_changes` counts them, ranks the fields that change most and keeps a small
sample of rows with every email masked and the values of identifier fields masked too
(:mod:`tasks.core.masking`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import polars as pl

from tasks.core.masking import mask_email, mask_json_value
from tasks.core.sync import ON_LIST_ACTIONS, TAGS_FIELD, with_field_hashes

ChangeKind = Literal["create", "update", "unsubscribe", "remove", "holdout"]
CHANGE_KINDS: tuple[ChangeKind, ...] = get_args(ChangeKind)
SAMPLE_ROWS = 10
TOP_FIELDS = 5


@dataclass(frozen=True)
class SampleRow:
    """One planned change as a person may read it: masked email, what happens, new values."""

    email: str
    change: ChangeKind
    detail: str


@dataclass(frozen=True)
class ChangeSummary:
    """Counts of one audience's planned changes, the fields changing most, a masked sample."""

    creates: int = 0
    updates: int = 0
    unsubscribes: int = 0
    removals: int = 0
    holdouts: int = 0
    updates_fields_unknown: int = 0
    """Updates against ledger rows written before field hashes were recorded."""
    resends: int = 0
    """Updates with no field changed: their last send failed or was never answered."""
    retagged: int = 0
    """Updates whose tags change (some platforms need a call per such member)."""
    top_fields: tuple[tuple[str, int], ...] = ()
    sample: tuple[SampleRow, ...] = field(default_factory=tuple)

    @property
    def planned(self) -> int:
        return self.creates + self.updates + self.unsubscribes + self.removals + self.holdouts

    def count(self, change: ChangeKind) -> int:
        return {"create": self.creates, "update": self.updates,
                "unsubscribe": self.unsubscribes, "remove": self.removals,
                "holdout": self.holdouts}[change]  # fmt: skip

    def describe_fields(self) -> str:
        """``LTV 12, FNAME 3`` (updates per field), or ``-``."""
        return ", ".join(f"{name} {n:,}" for name, n in self.top_fields) or "-"


def _previous(ledger: pl.LazyFrame, destination: str, audience: str) -> pl.LazyFrame:
    if "field_hashes" not in ledger.collect_schema().names():  # a ledger from before the column
        ledger = ledger.with_columns(pl.lit(None, pl.String).alias("field_hashes"))
    return ledger.filter(
        (pl.col("destination") == destination) & (pl.col("audience") == audience)
    ).select(
        "contact_key",
        pl.col("action").alias("prev_action"),
        pl.col("field_hashes").alias("prev_field_hashes"),
    )


def classify_changes(
    plan: pl.DataFrame, ledger: pl.LazyFrame, *, destination: str, audience: str, field_key: bytes
) -> pl.DataFrame:
    """``plan`` plus ``field_hashes`` (keyed with ``field_key``, as the ledger records them),
    ``change`` (a :data:`ChangeKind`) and ``changed_fields`` (field names for updates and
    creates; null when the ledger row predates field hashes)."""
    previous = _previous(ledger, destination, audience).collect()
    plan = with_field_hashes(plan, field_key)
    joined = plan.join(previous, on="contact_key", how="left", maintain_order="left")
    is_update = (pl.col("action") == "subscribe") & pl.col("prev_action").is_in(ON_LIST_ACTIONS)
    change = (
        pl.when(is_update)
        .then(pl.lit("update"))
        .when(pl.col("action") == "subscribe")
        .then(pl.lit("create"))
        .otherwise(pl.col("action"))
    )
    joined = joined.with_columns(change.alias("change"))
    changed = [
        _changed_fields(row["change"], row["field_hashes"], row["prev_field_hashes"])
        for row in joined.select("change", "field_hashes", "prev_field_hashes").iter_rows(
            named=True
        )
    ]
    return joined.with_columns(
        pl.Series("changed_fields", changed, dtype=pl.List(pl.String()))
    ).drop("prev_action", "prev_field_hashes")


def _changed_fields(change: str, now: str | None, before: str | None) -> list[str] | None:
    if change == "create":
        return sorted(json.loads(now)) if now else []
    if change != "update":
        return []
    if not now or not before:
        return None
    current, previous = json.loads(now), json.loads(before)
    return sorted(name for name in set(current) | set(previous)
                  if current.get(name) != previous.get(name))  # fmt: skip


def summarise_changes(
    classified: pl.DataFrame,
    *,
    identifier_fields: Collection[str] = (),
    sample_rows: int = SAMPLE_ROWS,
    top_fields: int = TOP_FIELDS,
) -> ChangeSummary:
    """Counts, the ``top_fields`` fields updated most, and up to ``sample_rows`` rows (spread
    over the kinds of change) with emails masked and ``identifier_fields`` values masked."""
    counts = Counter(classified["change"].to_list())
    updates = classified.filter(pl.col("change") == "update")
    per_field: Counter[str] = Counter()
    unknown = resends = retagged = 0
    for fields in updates["changed_fields"].to_list():
        if fields is None:
            unknown += 1
            continue
        resends += not fields
        retagged += TAGS_FIELD in fields
        per_field.update(f for f in fields if f != TAGS_FIELD)
    ranked = sorted(per_field.items(), key=lambda kv: (-kv[1], kv[0]))[:top_fields]
    return ChangeSummary(
        creates=counts["create"],
        updates=counts["update"],
        unsubscribes=counts["unsubscribe"],
        removals=counts["remove"],
        holdouts=counts["holdout"],
        updates_fields_unknown=unknown,
        resends=resends,
        retagged=retagged,
        top_fields=tuple(ranked),
        sample=_sample(classified, identifier_fields, sample_rows),
    )


def _sample(
    classified: pl.DataFrame, identifier_fields: Collection[str], size: int
) -> tuple[SampleRow, ...]:
    """Round-robin over the kinds of change, in plan order, so each kind shows up."""
    by_kind = {
        kind: classified.filter(pl.col("change") == kind).head(size).iter_rows(named=True)
        for kind in CHANGE_KINDS
    }
    rows: list[SampleRow] = []
    while len(rows) < size and by_kind:
        for kind in list(by_kind):
            row = next(by_kind[kind], None)
            if row is None:
                del by_kind[kind]
            elif len(rows) < size:
                rows.append(_sample_row(row, identifier_fields))
    return tuple(rows)


def _shown(value: Any, *, identifier: bool) -> str:
    """A value as the sample shows it: masked when it identifies someone, ``(empty)`` if null."""
    return "(empty)" if value is None else str(mask_json_value(value, identifier=identifier))


def _sample_row(row: Mapping[str, Any], identifier_fields: Collection[str]) -> SampleRow:
    change: ChangeKind = row["change"]
    detail = ""
    if change in ("create", "update") and row["payload"]:
        values = json.loads(row["payload"]).get("fields") or {}
        shown = row["changed_fields"]
        names = sorted(values) if change == "create" or shown is None else shown
        parts = [
            f"{name}={_shown(values[name], identifier=name in identifier_fields)}"
            for name in names
            if name in values
        ]
        if change == "update" and shown is None:
            parts.insert(0, "(fields changed: unknown)")
        elif change == "update" and not shown:
            parts = ["(resend, no field changed)"]
        elif change == "update" and TAGS_FIELD in shown:
            parts.append("tags changed")
        detail = ", ".join(parts)
    return SampleRow(email=mask_email(str(row["email"])), change=change, detail=detail)
