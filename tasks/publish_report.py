"""The publish plan a marketer can read, and the send budgets that may hold an audience.

Before a publish sends anything, :func:`preview_audience` works out per audience what it will
change (:mod:`tasks.core.change_summary`: creates, updates and the fields they change, removals,
unsubscribes, holdouts, a masked sample) and what it will cost (:mod:`tasks.core.send_budget`:
API calls by kind, as the platform adapter itself prices them, and the minimum send time under
the platform's documented limits). :func:`budget_holds` compares the costs with the
``send_budget`` ceilings of ``pipeline.yaml``; the publish flow holds an audience over its
budget like any other hold (its unsubscribes still go out). The same plan is shown on the run
page (:func:`show_publish_plan`), logged, and printed by the CLI (:func:`render_plan_text`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.connectors.destinations import open_platform
from tasks.connectors.destinations.protocol import Destination as Platform
from tasks.connectors.destinations.protocol import PlannedOperation
from tasks.connectors.lake import Lake
from tasks.core.change_summary import ChangeSummary, classify_changes, summarise_changes
from tasks.core.config import Destination, PipelineConfig
from tasks.core.config_publish import resolved_fields
from tasks.core.masking import is_pii_name, mask_emails
from tasks.core.send_budget import (
    CallCount,
    SendBudget,
    SendEstimate,
    combine,
    estimate,
    format_duration,
)
from tasks.core.sync import field_hash_key
from tasks.errors import AudienceLakeError
from tasks.publish_reads import ReadPins
from tasks.publishing import ledger, list_removals, plan_audience
from tasks.reports import AudiencePreview
from tasks.resources import open_lake, pepper

PLAN_TABLE_KEY = "publish-plan"
PLAN_MARKDOWN_KEY = "publish-plan-detail"
CLI_SAMPLE_ROWS = 3
PLAN_TEMPLATE = "publish plan %s/%s: %s; %s"
"""The line logged per audience before sending: changes, then calls and minimum time."""


def identifier_fields(kind: str, destination: Destination, segment: str) -> set[str]:
    """Platform fields holding a direct identifier (by their name or their source column):
    their values are masked in the sample."""
    fields = resolved_fields(kind, destination.audiences[segment])
    return {name for name, m in fields.items()
            if is_pii_name(name) or (m.column is not None and is_pii_name(m.column))}  # fmt: skip


def engine_batches(count: int, size: int) -> Iterator[int]:
    """The sizes of the batches the publish engine hands the adapter (see
    :func:`tasks.core.sync.platform_batches`)."""
    full, rest = divmod(count, size)
    yield from [size] * full
    if rest:
        yield rest


def planned_calls(platform: Platform, changes: ChangeSummary, batch_size: int) -> list[CallCount]:
    """Every request the publish of ``changes`` makes, priced by ``platform``, batch by batch
    as the engine sends them; the field check comes first when anything is upserted."""
    subscribes = changes.creates + changes.updates
    calls: list[CallCount] = []
    if subscribes:
        calls += platform.planned_calls("fields", 0)
    retagged = changes.retagged
    for size in engine_batches(subscribes, batch_size):
        calls += platform.planned_calls("upsert", size, retagged=min(retagged, size))
        retagged -= min(retagged, size)
    others: tuple[tuple[PlannedOperation, int], ...] = (
        ("unsubscribe", changes.unsubscribes),
        ("remove", changes.removals),
    )
    for operation, count in others:
        for size in engine_batches(count, batch_size):
            calls += platform.planned_calls(operation, size)
    return calls


def preview_audience(
    lake: Lake,
    destination_name: str,
    destination: Destination,
    segment: str,
    *,
    open_sink: Callable[[Destination], Platform] = open_platform,
    pins: ReadPins | None = None,
) -> AudiencePreview:
    """Plan one audience against the ledger and price it (gold at ``pins``); sends nothing (the
    adapter is opened only to ask for its prices)."""
    list_id = destination.audiences[segment].list_id
    plan = plan_audience(lake, destination_name, destination, segment, pins=pins)
    key = field_hash_key(pepper()[0])
    classified = classify_changes(
        plan, ledger(lake), destination=destination_name, audience=list_id, field_key=key
    )
    changes = summarise_changes(
        classified, identifier_fields=identifier_fields(destination.kind, destination, segment)
    )
    removals = list_removals(lake, plan, destination=destination_name, audience=list_id)
    preview = AudiencePreview(destination_name, segment, list_id, changes, removals=removals)
    if changes.planned == changes.holdouts:  # nothing to send: nothing to price
        return preview
    try:
        platform = open_sink(destination)
    except AudienceLakeError as exc:
        # One destination that cannot open must not stop the others' plans (nor their
        # unsubscribes): its own publish meets the error again and fails alone.
        return replace(preview, unpriced=mask_emails(str(exc)))
    try:
        cost = estimate(planned_calls(platform, changes, destination.batch_size))
    finally:
        platform.close()
    return replace(preview, estimate=cost)


def budget_holds(
    config: PipelineConfig, previews: Sequence[AudiencePreview]
) -> dict[tuple[str, str], str]:
    """``(destination, segment) -> reason`` for audiences over a ``send_budget``: their own, or
    their destination's (all its audiences of the run together)."""
    holds: dict[tuple[str, str], list[str]] = {}
    by_destination: dict[str, list[AudiencePreview]] = {}
    for p in previews:
        by_destination.setdefault(p.destination, []).append(p)
        budget = config.destinations[p.destination].audiences[p.segment].send_budget
        path = f"destinations.{p.destination}.audiences.{p.segment}.send_budget"
        reason = _over(budget, p.estimate, path, f"{p.destination}/{p.segment}")
        if reason:
            holds.setdefault((p.destination, p.segment), []).append(reason)
    for name, group in by_destination.items():
        total = combine(p.estimate for p in group)
        who = f"{name} ({len(group)} audience{'s' if len(group) > 1 else ''})"
        reason = _over(config.destinations[name].send_budget, total, f"destinations.{name}"
                       ".send_budget", who)  # fmt: skip
        if reason:
            for p in group:
                if p.estimate.calls:
                    holds.setdefault((name, p.segment), []).append(reason)
    return {key: "; ".join(reasons) for key, reasons in holds.items()}


def _over(budget: SendBudget | None, planned: SendEstimate, path: str, who: str) -> str | None:
    exceeded = budget.exceeded_by(planned) if budget is not None else None
    if exceeded is None:
        return None
    return (f"send budget: {who} needs {planned.describe()} under "
            f"{'; '.join(planned.budgets)}, over {path}.{exceeded}")  # fmt: skip


def describe_changes(c: ChangeSummary) -> str:
    """``3 creates, 2 updates (LTV 2), 1 removal, 1 unsubscribe, 0 holdouts``."""
    updates = f"{c.updates:,} updates"
    if c.updates:
        detail = [c.describe_fields()] if c.top_fields else []
        detail += [f"{c.updates_fields_unknown:,} with unknown fields"] * bool(
            c.updates_fields_unknown
        )
        detail += [f"{c.resends:,} resends"] * bool(c.resends)
        updates += f" ({'; '.join(detail)})" if detail else ""
    return (f"{c.creates:,} creates, {updates}, {c.removals:,} removals, "
            f"{c.unsubscribes:,} unsubscribes, {c.holdouts:,} holdouts")  # fmt: skip


def log_plan(
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger], p: AudiencePreview
) -> None:
    logger.info(PLAN_TEMPLATE, p.destination, p.segment, describe_changes(p.changes),
                describe_cost(p))  # fmt: skip


def describe_cost(p: AudiencePreview) -> str:
    """The estimate in words, or why there is none."""
    return p.estimate.describe() if p.unpriced is None else f"calls not priced: {p.unpriced}"


@task(cache_policy=NO_CACHE, task_run_name="plan-publish")
def preview_publish(
    config: PipelineConfig, segments: Sequence[str] | None = None, pins: ReadPins | None = None
) -> list[AudiencePreview]:
    """Every audience's plan and send estimate (only ``segments`` when given), logged."""
    logger = get_run_logger()
    lake = open_lake()
    previews = []
    for name, destination in config.destinations.items():
        for segment in destination.audiences:
            if segments and segment not in segments:
                continue
            preview = preview_audience(lake, name, destination, segment, pins=pins)
            log_plan(logger, preview)
            previews.append(preview)
    return previews


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def plan_rows(
    previews: Sequence[AudiencePreview], holds: dict[tuple[str, str], str]
) -> list[dict[str, object]]:
    """One table-artifact row per audience."""
    return [
        {
            "destination": p.destination,
            "segment": p.segment,
            "list": p.audience,
            "creates": p.changes.creates,
            "updates": p.changes.updates,
            "removals": p.changes.removals,
            "unsubscribes": p.changes.unsubscribes,
            "holdouts": p.changes.holdouts,
            "fields changing most": p.changes.describe_fields(),
            "api calls": p.estimate.calls if p.unpriced is None else None,
            "minimum send time": format_duration(p.estimate.seconds)
            if p.unpriced is None
            else f"not priced: {p.unpriced}",
            "held": holds.get((p.destination, p.segment), ""),
        }
        for p in previews
    ]


def render_plan_markdown(
    previews: Sequence[AudiencePreview],
    holds: dict[tuple[str, str], str],
    *,
    run_id: str,
    dry_run: bool,
) -> str:
    """The run page's plan: per audience the counts, the fields, the calls and a sample."""
    title = "dry run: nothing is sent" if dry_run else "sent after this plan"
    lines = [f"# Publish plan, run `{run_id}` ({title})", ""]
    if not previews:
        return "\n".join([*lines, "No audience to publish."]) + "\n"
    for p in previews:
        c = p.changes
        lines += [
            f"## {p.destination} / {p.segment} (list `{p.audience}`)",
            "",
            "| creates | updates | removals | unsubscribes | holdouts |",
            "|---:|---:|---:|---:|---:|",
            f"| {c.creates} | {c.updates} | {c.removals} | {c.unsubscribes} | {c.holdouts} |",
            "",
            f"- Fields changing most (updates per field): {_cell(c.describe_fields())}",
        ]
        if c.updates_fields_unknown:
            lines.append(f"- {c.updates_fields_unknown} updates against ledger rows from "
                         "before field tracking: their changed fields are unknown")  # fmt: skip
        if c.resends:
            lines.append(f"- {c.resends} updates are resends of a failed or unanswered send")
        lines.append(f"- API calls: {_cell(describe_cost(p))}")
        if p.estimate.budgets:
            lines.append(f"- Rate limits: {_cell('; '.join(p.estimate.budgets))}")
        held = holds.get((p.destination, p.segment))
        if held:
            lines.append(f"- **Held**: {_cell(held)} (unsubscribes still go out)")
        if c.sample:
            lines += ["", "| email | change | values sent |", "|---|---|---|"]
            lines += [f"| {s.email} | {s.change} | {_cell(s.detail)} |" for s in c.sample]
        lines.append("")
    return "\n".join(lines)


def show_publish_plan(
    previews: Sequence[AudiencePreview],
    holds: dict[tuple[str, str], str],
    *,
    run_id: str,
    dry_run: bool,
) -> None:
    """The plan on the run page: a table (one row per audience) and the detail in markdown."""
    if previews:
        create_table_artifact(
            key=PLAN_TABLE_KEY,
            table=plan_rows(previews, holds),
            description="What each audience's publish changes and costs, before sending",
        )
    create_markdown_artifact(
        key=PLAN_MARKDOWN_KEY,
        markdown=render_plan_markdown(previews, holds, run_id=run_id, dry_run=dry_run),
        description="Per audience: counts, fields changing most, API calls, a masked sample",
    )


def render_plan_text(
    previews: Sequence[AudiencePreview], *, sample_rows: int = CLI_SAMPLE_ROWS
) -> list[str]:
    """The plan for a terminal: two lines per audience, then the start of its sample (the
    run page's artifact has all of it)."""
    lines: list[str] = []
    for p in previews:
        lines.append(f"  {p.destination + '/' + p.segment:<32} {describe_changes(p.changes)}")
        lines.append(f"  {'':<32} {describe_cost(p)}")
        for s in p.changes.sample[:sample_rows]:
            lines.append(f"  {'':<34} {s.change:<11} {s.email:<24} {s.detail}".rstrip())
    return lines
