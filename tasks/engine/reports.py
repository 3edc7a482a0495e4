"""What each transform stage reports: row balances, volume counts, data quality, what's next.

Every stage reports row balances over the rows it processed in this run, quarantine counts per
rule, and row counts for ``ops/volume_metrics``: the *table totals* after the run (per source
from the staging state, per segment from the audience), so a small incremental run never looks
like a volume drop. A source's quarantined count is a total too - its current bronze rows that
fail the contract, kept in the staging state - so a rerun after a crash, which finds the work
done, reports (and holds publishing) exactly as the run that did it would have.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from tasks.reports import TableReport

Logger = logging.Logger | logging.LoggerAdapter[Any]
Metric = dict[str, Any]
"""One row for ``ops/volume_metrics``: table, source or segment, rows, quarantined."""


@dataclass(frozen=True)
class StageReport:
    """What one transform stage did: row balances, counts for volume metrics, data quality."""

    tables: list[TableReport]
    metrics: list[Metric]
    rule_counts: list[dict[str, Any]] = field(default_factory=list)
    losses: list[dict[str, Any]] = field(default_factory=list)
    audience_sizes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StagingReport:
    """What staging did per role this run: rows checked and rejected, and how (mode)."""

    checked: dict[str, int]
    rejected: dict[str, int]
    modes: dict[str, str]
    metrics: list[Metric]
    rule_counts: list[dict[str, Any]] = field(default_factory=list)
    losses: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class SilverReport(StageReport):
    """:class:`StageReport` plus what gold must rebuild and the state to record afterwards.

    ``mode``: ``full``, ``incremental`` or ``unchanged``; ``contact_keys``: the contacts gold
    must recompute (None: every contact); ``state``: the transform state to commit once gold
    is built (None: nothing was built, nothing to record).
    """

    mode: str = "full"
    contact_keys: tuple[str, ...] | None = None
    state: dict[str, str] | None = None
