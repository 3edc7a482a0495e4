"""Prefect assets for the lake: every table a run wrote, with the tables it was built from.

Each flow, after writing, calls :func:`materialise` once per table it wrote. That runs a tiny
``materialize`` task whose only job is to tell Prefect "this asset was written, from these
upstream assets" (and the row counts as metadata); the work itself stays in the existing tasks.
Prefect turns it into ``prefect.asset.materialization.succeeded`` events and the asset graph
(bronze -> silver -> gold -> destination list) in the UI's Assets page.

Asset keys are URIs: a lake table is its location (``s3://bucket/lake/silver/contacts`` or
``file:///abs/.lake/silver/contacts``); a destination list is ``<kind>://<destination>/<list
id>`` (e.g. ``mailchimp://mailchimp/list-loyal-customers``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prefect.assets import Asset, AssetProperties, add_asset_metadata, materialize
from prefect.cache_policies import NO_CACHE

from tasks.core.config import PipelineConfig
from tasks.core.tables import GOLD_INPUTS, ROLE_TABLES, bronze_table


def lake_asset_key(root: str, table: str) -> str:
    """The table's location as a URI: ``s3://...`` as is, a local root as ``file://``."""
    if "://" in root:
        return f"{root.rstrip('/')}/{table}"
    return Path(root, table).resolve().as_uri()


def destination_asset_key(kind: str, destination: str, list_id: str) -> str:
    """e.g. ``mailchimp://mailchimp/list-loyal-customers``."""
    return f"{kind}://{destination}/{list_id}"


def table_inputs(config: PipelineConfig, table: str) -> tuple[str, ...]:
    """The lake tables ``table`` is built from (none for bronze; unknown tables have none)."""
    if table in GOLD_INPUTS:
        return GOLD_INPUTS[table]
    return tuple(
        bronze_table(name)
        for name, source in config.sources.items()
        if source.enabled and ROLE_TABLES.get(source.role) == table
    )


def _record(metadata: Mapping[str, Any], key: str) -> None:
    add_asset_metadata(key, dict(metadata))


def materialise(
    key: str,
    *,
    name: str,
    upstream: Iterable[str] = (),
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Record in Prefect that asset ``key`` was written from ``upstream`` (asset keys)."""
    asset = Asset(key=key, properties=AssetProperties(name=name))
    recorder = materialize(
        asset,
        by="audience-lake",
        asset_deps=[Asset(key=u) for u in upstream],
        name="materialise",
        task_run_name=f"materialise {name}",
        cache_policy=NO_CACHE,
    )(_record)
    recorder(dict(metadata or {}), key)


def materialise_tables(
    config: PipelineConfig, root: str, rows: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """:func:`materialise` each lake table in ``rows`` (table -> metadata); returns the keys."""
    keys = []
    for table, metadata in rows.items():
        key = lake_asset_key(root, table)
        upstream = [lake_asset_key(root, t) for t in table_inputs(config, table)]
        materialise(key, name=table, upstream=upstream, metadata=metadata)
        keys.append(key)
    return keys
