"""Small frozen values the task wrappers return (never DataFrames)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tasks.core.change_summary import ChangeSummary
from tasks.core.send_budget import EMPTY_ESTIMATE, SendEstimate

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
class AudiencePreview:
    """What one audience's publish will change and cost, worked out before anything is sent:
    the changes against the sync ledger and the send-budget planner's estimate."""

    destination: str
    segment: str
    audience: str
    changes: ChangeSummary = field(default_factory=ChangeSummary)
    estimate: SendEstimate = EMPTY_ESTIMATE
    unpriced: str | None = None
    """Why the calls could not be priced (the adapter would not open: a missing secret...);
    the publish then meets the same error on its own, for this audience only."""
    removals: tuple[int, int] | None = None
    """``(on_list, removals)`` of the large-removal guard, counted on this same plan
    (:func:`tasks.core.removal_guard.audience_removals`), so the guard need not plan again."""


@dataclass(frozen=True)
class PublishReport:
    """What one publish of one audience did.

    ``planned`` changes were due; ``sent`` (of which ``unsubscribed``) were accepted and
    ``failed`` refused by the platform. A held audience (``held`` says why) still sends its
    unsubscribes and keeps ``held_back`` subscribes/updates for a later run; a ``skipped`` one
    found its list claimed by another run (for longer than ``lease_wait_seconds``) and sent
    nothing; ``waited_seconds`` is how long it waited for that claim. ``removed`` (of
    ``sent``) left the list in mirror mode; ``held_out`` members of the audience's holdout were
    recorded and not sent; ``suppressed`` members the list itself reports as opted out were
    recorded and not sent (never subscribed or updated).
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
    removed: int = 0
    held_out: int = 0
    suppressed: int = 0
    preview: AudiencePreview | None = None
    """The plan this publish started from (the dry-run view), when the flow made one."""

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


@dataclass(frozen=True)
class SubRun:
    """A sub-flow run the pipeline started: its flow name, its id and how it ended."""

    flow: str
    flow_run_id: str | None
    state: str


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_pipeline_summary(
    *,
    run_id: str,
    sub_runs: Sequence[SubRun],
    ingested: Sequence[IngestReport],
    tables: Sequence[TableReport],
    rule_counts: Sequence[Mapping[str, Any]],
    audience_sizes: Mapping[str, int],
    published: Sequence[PublishReport],
    failed_sources: Mapping[str, str],
) -> str:
    """Markdown for the pipeline run page: what every stage did, with links to the sub-runs.

    Links are relative to the UI (``/runs/flow-run/<id>``), so they work behind any host name.
    """
    lines = [f"# Pipeline run `{run_id}`", "", "## Sub-runs", ""]
    for r in sub_runs:
        link = f"[{r.flow}](/runs/flow-run/{r.flow_run_id})" if r.flow_run_id else r.flow
        lines.append(f"- {link}: {r.state}")
    if failed_sources:
        lines += ["", "## Failed sources", "", "| source | error |", "|---|---|"]
        lines += [f"| {s} | {_cell(e)} |" for s, e in sorted(failed_sources.items())]
    lines += [
        "",
        "## Rows per table (this run)",
        "",
        "| table | rows in | rows out | quarantined | duplicates |",
        "|---|---:|---:|---:|---:|",
    ]
    for i in ingested:
        lines.append(
            f"| {i.table} | {i.rows + i.quarantined_rows} | {i.rows} | {i.quarantined_rows} | 0 |"
        )
    for t in tables:
        lines.append(
            f"| {t.table} | {t.rows_in} | {t.rows_out} | {t.quarantined} | {t.duplicates} |"
        )
    by_rule: dict[tuple[str, str], int] = {}
    for counted in rule_counts:
        key = (str(counted.get("table")), str(counted.get("rule")))
        by_rule[key] = by_rule.get(key, 0) + int(counted.get("rows", 0))
    lines += ["", "## Quarantined this run, by rule", ""]
    if by_rule:
        lines += ["| table | rule | rows |", "|---|---|---:|"]
        lines += [
            f"| {table} | {_cell(rule)} | {rows} |"
            for (table, rule), rows in sorted(by_rule.items(), key=lambda kv: -kv[1])
        ]
    else:
        lines.append("Nothing was quarantined.")
    lines += [
        "",
        "## Audiences",
        "",
        "| segment | members | destination | outcome | planned | sent | unsubscribed | failed "
        "| held back | reason |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    published_segments = set()
    for p in published:
        published_segments.add(p.segment)
        reason = _cell(p.held or p.skipped or "")
        lines.append(
            f"| {p.segment} | {audience_sizes.get(p.segment, p.members)} | {p.destination} "
            f"| **{p.outcome}** | {p.planned} | {p.sent} | {p.unsubscribed} | {p.failed} "
            f"| {p.held_back} | {reason} |"
        )
    for segment, size in audience_sizes.items():
        if segment not in published_segments:
            lines.append(f"| {segment} | {size} | (none) | not published | | | | | | |")
    sent: dict[str, list[int]] = {}
    for p in published:
        totals = sent.setdefault(p.destination, [0, 0, 0])
        totals[0] += p.sent
        totals[1] += p.unsubscribed
        totals[2] += p.failed
    lines += ["", "## Sent per destination", ""]
    if sent:
        lines += ["| destination | sent | of which unsubscribed | failed |", "|---|---:|---:|---:|"]
        lines += [f"| {d} | {s} | {u} | {f} |" for d, (s, u, f) in sorted(sent.items())]
    else:
        lines.append("Nothing was published.")
    holds = [p for p in published if p.outcome in ("held", "skipped")]
    lines += ["", "## Holds", ""]
    if holds:
        lines += [
            f"- {p.destination}/{p.segment} {p.outcome}: {p.held or p.skipped}" for p in holds
        ]
    else:
        lines.append("No audience was held.")
    return "\n".join(lines) + "\n"
