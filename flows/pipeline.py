"""``pipeline`` flow: ingest -> transform -> publish. The scheduled entrypoint."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prefect import State, flow
from prefect.artifacts import create_markdown_artifact

from flows.audit import audited
from flows.common import current_run_id, load_config
from flows.ingest import ingest
from flows.publish import publish
from flows.transform import TransformReport, transform
from tasks.errors import SourcesFailedError
from tasks.publish import with_outcome
from tasks.reports import (
    IngestReport,
    PublishReport,
    SubRun,
    render_pipeline_summary,
    render_publish_summary,
)
from tasks.volume_charts import show_volume_charts

PUBLISH_SUMMARY_KEY = "publish-summary"
PIPELINE_SUMMARY_KEY = "pipeline-summary"


@dataclass(frozen=True)
class PipelineReport:
    run_id: str
    ingest: list[IngestReport]
    transform: TransformReport
    publish: list[PublishReport]


@flow(name="pipeline", log_prints=True)
@audited
def pipeline(
    config_path: str | None = None,
    full_refresh: bool = False,
    dry_run: bool = False,
    sources: list[str] | None = None,
    segments: list[str] | None = None,
    override_hold: bool = False,
    as_of: datetime | None = None,
) -> PipelineReport:
    """Run the whole job once. Every step is idempotent, so a rerun is always safe.

    A failed source does not stop the run: transform works on what landed, publish holds the
    audiences the failed source feeds (and sends the rest), then the run fails naming it.

    The run page carries a ``pipeline-summary`` artifact (rows per table, quarantine by rule,
    audiences, holds, what was sent, failed sources, links to the sub-runs), a
    ``volume-charts`` artifact and the ``publish-summary``. When an audience was held (or
    skipped) the run ends in a COMPLETED state named ``Held`` (``Skipped``) instead of plain
    ``Completed``; called as a function it returns the :class:`PipelineReport` either way.

    Args:
        config_path: The pipeline.yaml to run (empty: the AUDIENCE_LAKE_CONFIG setting).
        full_refresh: Re-read every source and rebuild silver and gold from all of bronze.
        dry_run: Plan each audience's changes and report them without sending anything.
        sources: Only ingest these sources (names from pipeline.yaml); empty: every one.
        segments: Only publish these segments (names from pipeline.yaml); empty: every one.
        override_hold: Publish held audiences anyway (the run says so); use after checking why.
        as_of: The moment time-relative features are computed at (empty: midnight UTC today).
    """
    run_id = current_run_id()
    ingest_state = ingest(
        config_path, sources=sources, full_refresh=full_refresh, return_state=True
    )
    outcome = ingest_state.result(raise_on_failure=False)
    failed_sources: SourcesFailedError | None = None
    ingested: list[IngestReport] = []
    if isinstance(outcome, SourcesFailedError):
        failed_sources = outcome
    elif isinstance(outcome, BaseException):
        raise outcome  # nothing was read (bad config, unknown source): stop here
    else:
        ingested = outcome
    transform_state = transform(
        config_path, full_refresh=full_refresh, as_of=as_of, return_state=True
    )
    transformed = transform_state.result()
    publish_state = publish(
        config_path,
        segments=segments,
        dry_run=dry_run,
        override_hold=override_hold,
        return_state=True,
    )
    published = publish_state.result()
    create_markdown_artifact(
        key=PUBLISH_SUMMARY_KEY,
        markdown=render_publish_summary(published, run_id=run_id),
        description="What each audience's publish did, and why any was held",
    )
    sub_runs = [
        sub_run("ingest", ingest_state),
        sub_run("transform", transform_state),
        sub_run("publish", publish_state),
    ]
    create_markdown_artifact(
        key=PIPELINE_SUMMARY_KEY,
        markdown=render_pipeline_summary(
            run_id=run_id,
            sub_runs=sub_runs,
            ingested=ingested,
            tables=transformed.tables,
            rule_counts=transformed.rule_counts,
            audience_sizes=transformed.audience_sizes,
            published=published,
            failed_sources=failed_sources.failed if failed_sources else {},
        ),
        description="What this run did in every stage, with links to its sub-runs",
    )
    show_volume_charts(load_config(config_path), run_id=run_id)
    if failed_sources is not None:
        raise failed_sources
    return with_outcome(published, PipelineReport(run_id, ingested, transformed, published))


def sub_run(flow_name: str, state: State[Any]) -> SubRun:
    """The sub-flow run a state belongs to, for the summary's links."""
    flow_run_id = state.state_details.flow_run_id
    return SubRun(flow_name, str(flow_run_id) if flow_run_id else None, state.name or "")
