"""``pipeline`` flow: ingest -> transform -> publish. The scheduled entrypoint."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from prefect import flow

from flows.common import current_run_id
from flows.ingest import ingest
from flows.publish import publish
from flows.transform import TransformReport, transform
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
    """Run the whole job once. Every step is idempotent, so a rerun is always safe."""
    run_id = current_run_id(None)
    ingested = ingest(config_path, sources=sources, full_refresh=full_refresh, run_id=run_id)
    transformed = transform(config_path, full_refresh=full_refresh, as_of=as_of, run_id=run_id)
    published = publish(
        config_path,
        segments=segments,
        dry_run=dry_run,
        override_hold=override_hold,
        run_id=run_id,
    )
    return PipelineReport(run_id, ingested, transformed, published)
