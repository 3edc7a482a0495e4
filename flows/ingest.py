"""``ingest`` flow: every configured source -> ``bronze/<source>``.

Sources are independent: one that fails does not stop the others from being read and committed.
The flow records how each source ended in ``ops/source_runs`` (publish holds the audiences a
failed source feeds), then fails naming every failed source with its error, one line each.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from flows.common import current_run_id, load_config, table_artifact, utc_now
from tasks.core.tables import SOURCE_RUNS
from tasks.errors import ConfigError, SourcesFailedError
from tasks.ingest import ingest_source
from tasks.lineage import materialise_tables
from tasks.reports import IngestReport
from tasks.resources import open_lake
from tasks.source_runs import record_source_runs
from tasks.volume import record_volumes

ERROR_LINE_CHARS = 400  # of one failed source's error in the flow's failure message


@flow(name="ingest", log_prints=True)
def ingest(
    config_path: str | None = None,
    sources: list[str] | None = None,
    full_refresh: bool = False,
) -> list[IngestReport]:
    """Pull each source (or only ``sources``) incrementally; ``full_refresh`` re-reads all.

    Args:
        config_path: The pipeline.yaml to run (empty: the AUDIENCE_LAKE_CONFIG setting).
        sources: Only these sources (names from pipeline.yaml); empty: every enabled source.
        full_refresh: Re-read every source from the beginning instead of from its watermark.
    """
    config = load_config(config_path)
    run_id = current_run_id()
    unknown = sorted(set(sources or []) - set(config.sources))
    if unknown:
        raise ConfigError(f"ingest: unknown source(s) {unknown}; known: {sorted(config.sources)}")
    selected = {
        name: source
        for name, source in config.sources.items()
        if source.enabled and (not sources or name in sources)
    }
    started_at = utc_now()
    reports: list[IngestReport] = []
    errors: dict[str, str | None] = {}
    for name, source in selected.items():
        state = ingest_source(
            name,
            source,
            run_id=run_id,
            started_at=started_at,
            full_refresh=full_refresh,
            return_state=True,
        )
        outcome = state.result(raise_on_failure=False)
        if isinstance(outcome, IngestReport):
            reports.append(outcome)
            errors[name] = None
        elif isinstance(outcome, Exception):
            errors[name] = one_line(outcome)
            print(f"ingest {name} FAILED (the other sources go on): {errors[name]}")
        else:  # pragma: no cover - a task returns its report or fails with an exception
            raise TypeError(f"ingest_source({name!r}) returned {outcome!r}")
    # Rows each source landed this run: the bronze series of the volume-anomaly check. A failed
    # source has no point (not a zero): it is held by its failure instead (ops/source_runs).
    landed = [
        {"table": r.table, "source": r.source, "rows": r.rows, "quarantined": 0} for r in reports
    ]
    record_volumes(landed, run_id=run_id, stage="ingest", now=started_at)
    record_source_runs(errors, run_id=run_id, now=utc_now())
    table_artifact("ingest-summary", [asdict(r) for r in reports], "Rows landed in bronze")
    materialise_tables(
        config,
        open_lake().root,
        {r.table: {"rows": r.rows, "batches": r.batches, "run_id": run_id} for r in reports},
    )
    failed = {name: error for name, error in errors.items() if error is not None}
    if failed:
        lines = "\n".join(f"  {name}: {error}" for name, error in failed.items())
        raise SourcesFailedError(
            f"ingest: {len(failed)} of {len(errors)} source(s) failed; the others landed, and "
            f"{SOURCE_RUNS} holds the audiences the failed ones feed:\n{lines}",
            failed,
        )
    return reports


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, bounded (an API's reply body may span many lines)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= ERROR_LINE_CHARS else text[: ERROR_LINE_CHARS - 1] + "…"
