"""A plain-text summary of the lake and of one pipeline run, for the CLI."""

from __future__ import annotations

import polars as pl

from flows.pipeline import PipelineReport
from tasks.connectors.lake import Lake
from tasks.core.tables import QUARANTINE
from tasks.publish_report import render_plan_text
from tasks.reports import PublishReport


def lake_summary(lake: Lake, report: PipelineReport) -> str:
    lines = [f"Audience Lake run {report.run_id}", f"lake: {lake.root}", "", "rows per table:"]
    for table in lake.tables():
        rows = lake.scan(table).select(pl.len()).collect().item()
        lines.append(f"  {table:<28} {rows:>9,}")
    if lake.exists(QUARANTINE):
        by_rule = (
            lake.scan(QUARANTINE)
            .group_by("table", "rule")
            .agg(pl.col("row").n_unique().alias("rows"))
            .sort("table", "rule")
            .collect()
        )
        lines += ["", "quarantined rows (all runs):"]
        for r in by_rule.iter_rows(named=True):
            lines.append(f"  {r['table']:<18} {r['rule'][:40]:<40} {r['rows']:>7,}")
    lines += ["", "audience size per segment:"]
    for segment, size in report.transform.audience_sizes.items():
        lines.append(f"  {segment:<28} {size:>9,}")
    lines += ["", *publish_summary(report.publish)]
    return "\n".join(lines)


def publish_summary(reports: list[PublishReport]) -> list[str]:
    """What the publish planned (counts, fields, calls, a masked sample) and what it sent."""
    lines = []
    previews = [p.preview for p in reports if p.preview is not None]
    if previews:
        dry = any(p.dry_run for p in reports)
        lines += [f"publish plan{' (dry run: nothing sent)' if dry else ''}:",
                  *render_plan_text(previews), ""]  # fmt: skip
    lines.append("published this run:")
    total = 0
    for p in reports:
        total += p.sent
        status = f"held: {p.held}" if p.held else ("dry run" if p.dry_run else "")
        extra = f"  removed {p.removed:,}" if p.removed else ""
        extra += f"  held out {p.held_out:,}" if p.held_out else ""
        extra += f"  opted out at the platform {p.suppressed:,}" if p.suppressed else ""
        lines.append(
            f"  {p.destination + '/' + p.segment:<32} sent {p.sent:>6,}"
            f"  unsubscribed {p.unsubscribed:>5,}"
            f"  failed {p.failed:>5,}{extra}  {status}".rstrip()
        )
    lines.append(f"contacts published: {total:,}")
    return lines
