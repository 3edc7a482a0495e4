"""Small frozen values the task wrappers return (never DataFrames)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

PublishOutcome = Literal["sent", "held", "skipped", "dry_run"]


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
    """What one publish of one audience did.

    ``planned`` changes were due; ``sent`` (of which ``unsubscribed``) were accepted and
    ``failed`` refused by the platform. A held audience (``held`` says why) still sends its
    unsubscribes and keeps ``held_back`` subscribes/updates for a later run; a ``skipped`` one
    found its list claimed by another run (for longer than ``lease_wait_seconds``) and sent
    nothing; ``waited_seconds`` is how long it waited for that claim.
    """

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
    held_back: int = 0
    skipped: str | None = None
    waited_seconds: float = 0.0

    @property
    def outcome(self) -> PublishOutcome:
        """The one word for this audience's publish (a held audience may still have sent)."""
        if self.skipped is not None:
            return "skipped"
        if self.dry_run:
            return "dry_run"
        if self.held is not None:
            return "held"
        return "sent"


def publish_state_name(reports: Sequence[PublishReport]) -> str | None:
    """``Held`` if any audience was held, else ``Skipped`` if any was skipped, else None.

    Flows that publish end in a COMPLETED state of this name, so a run that kept an audience
    back is never plain green.
    """
    outcomes = {r.outcome for r in reports}
    if "held" in outcomes:
        return "Held"
    if "skipped" in outcomes:
        return "Skipped"
    return None


def render_publish_summary(reports: Sequence[PublishReport], *, run_id: str) -> str:
    """Markdown for the run page: every audience's outcome, and why each hold or skip happened."""
    lines = [
        f"# Publish, run `{run_id}`",
        "",
        "| destination | segment | list | outcome | planned | sent | unsubscribed | failed "
        "| held back | reason |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in reports:
        reason = (r.held or r.skipped or "").replace("|", "\\|")
        lines.append(
            f"| {r.destination} | {r.segment} | {r.audience} | **{r.outcome}** | {r.planned} "
            f"| {r.sent} | {r.unsubscribed} | {r.failed} | {r.held_back} | {reason} |"
        )
    held = [r for r in reports if r.outcome in ("held", "skipped")]
    if held:
        lines += [
            "",
            "Held audiences still sent the unsubscribes of people who opted out; their "
            "subscribes and updates wait for a run without a hold (or `override_hold`).",
        ]
    return "\n".join(lines) + "\n"
