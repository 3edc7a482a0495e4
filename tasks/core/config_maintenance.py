"""``pipeline.yaml`` → ``maintenance``: keeping lake tables fast to read.

The ``maintain`` flow first deletes rows older than their table's retention (``retention``:
table -> days, overriding the catalogue's defaults, see :mod:`tasks.core.retention`), then
compacts every table's small files (Z-ordering the tables named in
``z_order`` by the columns their readers filter on), writes a checkpoint and vacuums files the
table stopped using more than ``retention_hours`` ago. Every key has a default, so a pipeline
without the section still loads. Example::

    maintenance:
      retention:                      # rows older than this are deleted (days, "13w", "never")
        bronze/web_events: 395d
        ops/quarantine: 90
      retention_hours: 168            # vacuum: keep removed files for 7 days
      target_file_mb: 128
      z_order:
        gold/audience_members: [contact_key]
      tables: []                      # empty: every table in the lake

The model stands alone (it imports nothing from ``tasks.core.config``), so it adds no edge to
that module's imports.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from tasks.core.tables import TABLES, is_bronze

TABLE_PATTERN = r"^[a-z0-9_]+/[a-z0-9_]+$"
TableName = Annotated[str, Field(pattern=TABLE_PATTERN, max_length=127)]
ColumnName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=127)]

# Publish and the incremental transform read members of changed contacts within a segment
# partition; clustering each partition by contact key lets those reads skip most files. Which
# tables and columns: the catalogue's ``cluster_by``.
DEFAULT_Z_ORDER: dict[str, list[str]] = {
    spec.name: list(spec.cluster_by) for spec in TABLES.values() if spec.cluster_by
}
MIN_RETENTION_HOURS = 1
DEFAULT_RETENTION_HOURS = 168
MAX_RETENTION_DAYS = 36_500
NEVER = "never"
_PERIOD = re.compile(r"^\s*(\d+)\s*([dw]?)\s*$")


def parse_days(value: Any) -> int | None:
    """A retention as days: an integer, ``"<n>d"``, ``"<n>w"``, or ``"never"``/null (None)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == NEVER):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a retention (days, '<n>d', '<n>w' or 'never')")
    if isinstance(value, int):
        days = value
    else:
        match = _PERIOD.match(str(value))
        if match is None:
            raise ValueError(f"{value!r} is not a retention (days, '<n>d', '<n>w' or 'never')")
        days = int(match.group(1)) * (7 if match.group(2) == "w" else 1)
    if not 1 <= days <= MAX_RETENTION_DAYS:
        raise ValueError(f"a retention of {days} day(s) is out of range 1..{MAX_RETENTION_DAYS}")
    return days


RetentionDays = Annotated[int | None, BeforeValidator(parse_days)]


def check_expirable(table: str) -> None:
    """``ValueError`` naming ``table`` if its rows cannot be given a retention: tables kept as
    evidence or current state, and silver/gold (their rows follow bronze)."""
    entry = TABLES.get(table)
    if entry is None:
        if is_bronze(table):
            return  # a source's bronze table: checked against the sources by PipelineConfig
        raise ValueError(f"{table}: not a table of the catalogue (tasks/core/tables.py)")
    if entry.kept_because:
        raise ValueError(f"{table}: its rows never expire ({entry.kept_because})")
    if entry.retention_column is None:
        raise ValueError(
            f"{table}: built from bronze, it has no retention of its own; give the bronze "
            "table a retention and its rows leave this table at the next transform"
        )


class MaintenanceConfig(BaseModel):
    """How the ``maintain`` flow compacts, orders and vacuums the lake's tables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retention: dict[TableName, RetentionDays] = Field(
        default_factory=dict,
        description=(
            "Table -> how long its rows are kept, in days (an integer, '395d', '57w'), or "
            "'never'. Overrides the catalogue's default (raw events 395 days, quarantine 90, "
            "volume metrics and alerts 400); the maintain flow deletes older rows. Consent, "
            "erasure and sync-ledger tables never expire; silver and gold follow bronze."
        ),
    )
    retention_hours: int = Field(
        default=DEFAULT_RETENTION_HOURS,
        ge=MIN_RETENTION_HOURS,
        le=24 * 365,
        description=(
            "Vacuum deletes files a table stopped using more than this many hours ago. A "
            "reader on a version younger than this always finds its files; one on an older "
            "version (a long time-travel query) may not. Erasure vacuums with its own, shorter "
            "retention."
        ),
    )
    target_file_mb: int = Field(
        default=128,
        ge=1,
        le=1024,
        description="Compaction and Z-order aim for data files of about this many MiB.",
    )
    z_order: dict[TableName, list[ColumnName]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_Z_ORDER.items()},
        description=(
            "Table -> columns its readers filter on; these tables are Z-ordered instead of "
            "compacted. Partition columns already prune reads and cannot be Z-order columns."
        ),
    )
    tables: list[TableName] = Field(
        default_factory=list,
        description="Only these tables (empty: every table in the lake).",
    )
    checkpoint: bool = Field(
        default=True, description="Write a checkpoint so readers skip replaying the JSON log."
    )
    max_attempts: int = Field(
        default=5,
        ge=1,
        le=20,
        description=(
            "Compaction attempts per table when writers keep committing; then the table is "
            "skipped until the next run."
        ),
    )

    @field_validator("z_order")
    @classmethod
    def _columns_given_once(cls, z_order: dict[str, list[str]]) -> dict[str, list[str]]:
        for table, columns in z_order.items():
            if not columns:
                raise ValueError(f"{table}: name at least one column")
            if len(set(columns)) != len(columns):
                raise ValueError(f"{table}: a column is named twice in {columns}")
        return z_order

    @field_validator("retention")
    @classmethod
    def _expirable(cls, retention: dict[str, int | None]) -> dict[str, int | None]:
        for table in retention:
            check_expirable(table)
        return retention

    @field_validator("tables")
    @classmethod
    def _tables_once(cls, tables: list[str]) -> list[str]:
        if len(set(tables)) != len(tables):
            raise ValueError(f"a table is named twice in {tables}")
        return tables

    @property
    def target_size(self) -> int:
        """The target file size in bytes."""
        return self.target_file_mb * 1024 * 1024
