"""Helpers shared by the flow entrypoints: config loading, run ids, artifacts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from tasks.core.config import PipelineConfig, load_pipeline
from tasks.core.settings import load_settings


def load_config(config_path: str | None) -> PipelineConfig:
    """``pipeline.yaml`` from the flow parameter, else ``AUDIENCE_LAKE_CONFIG``."""
    return load_pipeline(config_path or load_settings().config)


def current_run_id(run_id: str | None) -> str:
    """The run id to stamp on rows: the parent's when given, else this flow run's."""
    if run_id:
        return run_id
    return str(flow_run.get_id() or f"local-{datetime.now(UTC):%Y%m%dT%H%M%S%f}")


def utc_now() -> datetime:
    return datetime.now(UTC)


def table_artifact(key: str, rows: Sequence[dict[str, Any]], description: str) -> None:
    """Show a table on the flow run page (keys: lowercase letters, digits and dashes)."""
    if rows:
        create_table_artifact(key=key, table=list(rows), description=description)
