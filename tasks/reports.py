"""Small frozen values the task wrappers return (never DataFrames)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class IngestReport:
    source: str
    table: str
    rows: int
    batches: int
    skipped_batches: int
    watermark: str | None
    # Rows (or raw records) sent to ops/quarantine instead of bronze; batches (files)
    # quarantined whole this run; batches skipped because an earlier run quarantined them whole.
    quarantined_rows: int = 0
    rejected_batches: int = 0
    known_bad_batches: int = 0


@dataclass(frozen=True)
class TableReport:
    """Row balance of one output table: ``rows_in == rows_out + quarantined + duplicates``."""

    table: str
    rows_in: int
    rows_out: int
    quarantined: int
    duplicates: int

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.rows_out + self.quarantined + self.duplicates


@dataclass(frozen=True)
class PublishReport:
    destination: str
    segment: str
    audience: str
    members: int
    planned: int
    sent: int
    failed: int
    unsubscribed: int
    held: str | None = None
    dry_run: bool = False
    errors: tuple[str, ...] = field(default_factory=tuple)
