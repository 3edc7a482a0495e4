"""Helpers shared by the flow entrypoints: config loading, run ids, artifacts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from tasks.core.config import PipelineConfig, load_pipeline
from tasks.core.settings import load_settings
from tasks.errors import OrchestratorError
from tasks.secret_blocks import BLOCK_PREFIX as _REGISTERS_SECRET_BLOCKS  # noqa: F401


def load_config(config_path: str | None) -> PipelineConfig:
    """``pipeline.yaml`` from the flow parameter, else ``AUDIENCE_LAKE_CONFIG``."""
    return load_pipeline(config_path or load_settings().config)


def current_run_id(run_id: str | None = None) -> str:
    """The run id to stamp on rows: ``run_id`` when given, else the top-level flow run's.

    A sub-flow (ingest, transform, publish called by ``pipeline``) stamps its rows with the
    pipeline's flow run id, read from Prefect's run context: the id is internal and never a
    parameter a person has to fill in.
    """
    if run_id:
        return run_id
    if flow_run.get_id() is None:
        return f"local-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
    return str(flow_run.get_root_flow_run_id())


def utc_now() -> datetime:
    return datetime.now(UTC)


def table_artifact(key: str, rows: Sequence[dict[str, Any]], description: str) -> None:
    """Show a table on the flow run page (keys: lowercase letters, digits and dashes)."""
    if rows:
        create_table_artifact(key=key, table=list(rows), description=description)


def require_prefect_api() -> None:
    """Check, before any flow starts, that the configured Prefect API answers.

    Without ``PREFECT_API_URL`` flows run against a temporary local server and there is nothing
    to check. With it, an unreachable server would otherwise surface as Prefect's bare
    ``RuntimeError: Failed to reach API`` after the run has begun.

    Raises:
        OrchestratorError: naming the URL, the reason and the way out.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        return
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        reason = str(problem).splitlines()[0] if str(problem) else type(problem).__name__
        raise OrchestratorError(
            f"Prefect API at {url} is unreachable: {reason}; start the server "
            "(prefect server start) or unset PREFECT_API_URL to run ephemerally"
        )
