"""Why did this contact get this value on this day: the sends of ``ops/sync_history`` explained.

:func:`contact_sends` lists each send to a contact with the gold version it read, and the values
it carried, re-read from gold at the recorded versions (time travel) through the audience's
*current* mapping. They are marked ``verified`` when they hash to what was sent; a mapping
changed since gives a different hash, and the send says so. Identifiers among the values are
masked.

Time travel needs the old files: a version older than the vacuum retention, or one from before
an erasure (which purges history), can no longer be read; the send is then listed without its
values, saying why.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from tasks.connectors.lake import Lake
from tasks.core.config import PipelineConfig
from tasks.core.config_publish import FieldMapping, resolved_fields
from tasks.core.masking import is_pii_name, mask_json_value
from tasks.core.sync import _with_payload_hash
from tasks.core.tables import AUDIENCE, PII_FIELDS
from tasks.errors import AudienceLakeError
from tasks.publish_reads import ReadPins
from tasks.publishing import publishable_members
from tasks.sync_history import sends_of


@dataclass(frozen=True)
class SendView:
    """One send as the history command prints it."""

    synced_at: datetime
    destination: str
    audience: str
    segment: str
    action: str
    status: str
    error: str | None
    run_id: str
    audience_version: int | None
    as_of_run: str | None
    values: dict[str, Any] | None
    """The mapped fields re-read at the recorded versions (identifiers masked); None: none sent
    (not a subscribe) or they can no longer be read (see ``note``)."""
    note: str


def contact_sends(lake: Lake, config: PipelineConfig, contact_key: str) -> list[SendView]:
    """Each send to ``contact_key`` with the values it carried (see the module docstring)."""
    views = []
    for row in sends_of(lake, contact_key).iter_rows(named=True):
        values, note = _values_sent(lake, config, row)
        views.append(
            SendView(
                synced_at=row["synced_at"],
                destination=row["destination"],
                audience=row["audience"],
                segment=row["segment"],
                action=row["action"],
                status=row["status"],
                error=row["error"],
                run_id=row["run_id"],
                audience_version=row["audience_version"],
                as_of_run=row["as_of_run"],
                values=values,
                note=note,
            )
        )
    return views


def _values_sent(
    lake: Lake, config: PipelineConfig, row: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, str]:
    if row["action"] != "subscribe":
        return None, "no fields sent"
    destination = config.destinations.get(row["destination"])
    audience = None if destination is None else destination.audiences.get(row["segment"])
    if destination is None or audience is None:
        return None, "audience no longer configured: values not re-read"
    versions = json.loads(row["versions"] or "{}")
    pins = ReadPins(versions)
    plain = audience.model_copy(update={"holdout": 0.0})  # assignment is not what is asked
    try:
        member = (
            publishable_members(lake, destination.kind, row["segment"], plain, pins=pins)
            .filter(pl.col("contact_key") == row["contact_key"])
            .with_columns(pl.lit("subscribe").alias("action"))
            .pipe(_with_payload_hash)
            .select("payload", "payload_hash")
            .collect()
        )
    except (AudienceLakeError, pl.exceptions.PolarsError, OSError) as exc:
        return None, f"gold at v{row['audience_version']} can no longer be read ({exc})"
    if member.is_empty():
        return None, f"not in {AUDIENCE}@v{row['audience_version']}"
    payload, digest = member.row(0)
    fields = json.loads(payload)["fields"]
    mapping = resolved_fields(destination.kind, audience)
    masked = {
        name: mask_json_value(value, identifier=_identifies(name, mapping.get(name)))
        for name, value in fields.items()
    }
    verified = digest == row["payload_hash"]
    return masked, "verified" if verified else "mapping changed since: values differ from sent"


def _identifies(field: str, mapping: FieldMapping | None) -> bool:
    """Whether a platform field carries a direct identifier (by its name or its gold column)."""
    column = None if mapping is None else mapping.column
    if column is not None and (column in PII_FIELDS or is_pii_name(column)):
        return True
    return is_pii_name(field)
