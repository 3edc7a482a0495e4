"""``pipeline`` flow: ingest -> transform -> publish. The scheduled entrypoint."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from prefect import flow

from flows.common import current_run_id
from flows.ingest import ingest
from flows.publish import publish
from flows.transform import TransformReport, transform
from tasks.errors import SourcesFailedError
from tasks.reports import IngestReport, PublishReport


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
    if failed_sources is not None:
        raise failed_sources
    return PipelineReport(run_id, ingested, transformed, published)
