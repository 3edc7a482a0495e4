"""Checking frames against contracts during a transform stage, and keeping what failed.

A :class:`Checker` splits each frame it is given into valid rows and quarantine records
(:func:`tasks.core.contracts.split_valid`) and keeps the records until the stage writes them to
``ops/quarantine``. Nothing is dropped silently: every row a stage rejects is in a record.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import polars as pl

from tasks.connectors.lake import Lake
from tasks.core.contracts import Contract, Split, rule_counts, split_valid
from tasks.core.masking import mask_quarantine
from tasks.core.tables import QUARANTINE_SCHEMA, TABLES, pii_columns
from tasks.engine.reports import Logger
from tasks.quarantine import records_batch_id, write_quarantine_records


class Checker:
    """Checks frames against contracts for one stage and keeps the quarantine records.

    :meth:`flush` writes the records kept so far; a caller about to commit rows whose invalid
    siblings must not be lost flushes first (see :mod:`tasks.engine.staging`).
    """

    def __init__(self, *, run_id: str, now: datetime, logger: Logger) -> None:
        self.run_id = run_id
        self.now = now
        self.logger = logger
        self.quarantine: list[pl.DataFrame] = []
        self._flushed = 0

    def check(
        self, frame: pl.DataFrame, contract: Contract, *, table: str, warn: bool = True
    ) -> Split:
        """Valid rows of ``frame``; its quarantine records (identifiers masked) are kept.

        ``warn=False`` leaves the warning to the caller (:meth:`warn_rejected`), which checks a
        table in chunks and reports the rows quarantined once, for all of them.
        """
        split = split_valid(frame, contract, table=table, run_id=self.run_id, now=self.now)
        self.quarantine.append(mask_quarantine(split.quarantine, _pii(table, frame)))
        if warn:
            self.warn_rejected(contract, table=table, rejected=split.rejected)
        return split

    def warn_rejected(self, contract: Contract, *, table: str, rejected: int) -> None:
        if rejected:
            self.logger.warning("%s: %d row(s) quarantined by %s", table, rejected, _name(contract))

    def records(self) -> pl.DataFrame:
        if not self.quarantine:
            return pl.DataFrame(schema=QUARANTINE_SCHEMA)
        return pl.concat(self.quarantine).unique("quarantine_id", maintain_order=True)

    def flush(self, lake: Lake, *, stage: str) -> None:
        """Write the records kept since the last flush (idempotently: a redo adds nothing)."""
        pending = self.quarantine[self._flushed :]
        self._flushed = len(self.quarantine)
        records = pl.concat(pending).unique("quarantine_id") if pending else None
        if records is not None and records.height:
            write_quarantine_records(
                lake, records, batch_id=records_batch_id(f"transform-{stage}", records)
            )

    def write(self, lake: Lake, *, stage: str) -> list[dict[str, Any]]:
        """Write this stage's quarantine (idempotently) and return its counts per rule."""
        self.flush(lake, stage=stage)
        return rule_counts(self.records().lazy()).collect().to_dicts()


def _pii(table: str, frame: pl.DataFrame) -> set[str]:
    """The identifier columns of ``frame``: the catalogue's for ``table`` and by field name."""
    listed = TABLES[table].pii if table in TABLES else ()
    return {*listed, *pii_columns(frame.columns)}


def _name(contract: Contract) -> str:
    return getattr(contract, "__name__", None) or str(getattr(contract, "name", "contract"))
