"""``pipeline`` flow: ingest -> transform -> publish. The scheduled entrypoint."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.common import current_run_id
from flows.ingest import ingest
from flows.publish import publish
from flows.transform import TransformReport, transform
from tasks.errors import SourcesFailedError
from tasks.publish import with_outcome
from tasks.reports import IngestReport, PublishReport, render_publish_summary

PUBLISH_SUMMARY_KEY = "publish-summary"


@dataclass(frozen=True)
class PipelineReport:
    run_id: str
    ingest: list[IngestReport]
    transform: TransformReport
    publish: list[PublishReport]


@flow(name="pipeline", log_prints=True)
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

    The run page carries a ``publish-summary`` artifact: each audience's outcome, and the reason
    for every hold. When an audience was held (or skipped) the run ends in a COMPLETED state
    named ``Held`` (``Skipped``) instead of plain ``Completed``; called as a function it returns
    the :class:`PipelineReport` either way.
    """
    run_id = current_run_id(None)
    ingest_state = ingest(
        config_path, sources=sources, full_refresh=full_refresh, run_id=run_id, return_state=True
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
    transformed = transform(config_path, full_refresh=full_refresh, as_of=as_of, run_id=run_id)
    published = publish(
        config_path,
        segments=segments,
        dry_run=dry_run,
        override_hold=override_hold,
        run_id=run_id,
    )
    create_markdown_artifact(
        key=PUBLISH_SUMMARY_KEY,
        markdown=render_publish_summary(published, run_id=run_id),
        description="What each audience's publish did, and why any was held",
    )
    if failed_sources is not None:
        raise failed_sources
    return with_outcome(published, PipelineReport(run_id, ingested, transformed, published))
