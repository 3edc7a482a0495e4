"""Source readers, selected by the ``kind`` of a source in ``pipeline.yaml``.

Adding a source kind = one reader class, one config model, one line in ``SOURCE_READERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urljoin

from tasks.connectors.http import OAuth2ClientCredentials, build_client
from tasks.connectors.sources.base import SourceBatch, SourceReader
from tasks.connectors.sources.files import FileDropReader
from tasks.connectors.sources.hubspot import HubSpotContactsReader
from tasks.connectors.sources.sql import SqlTableReader
from tasks.core.config import (
    BearerToken,
    FileDropSource,
    HubSpotContactsSource,
    Source,
    SqlSource,
)
from tasks.core.config import (
    OAuth2ClientCredentials as OAuth2Config,
)
from tasks.core.settings import resolve_secret

__all__ = ["SOURCE_READERS", "SourceBatch", "SourceReader", "open_source"]


def _open_hubspot(name: str, config: HubSpotContactsSource) -> SourceReader:
    auth: Any
    headers: dict[str, str] = {}
    if isinstance(config.auth, OAuth2Config):
        auth = OAuth2ClientCredentials(
            urljoin(config.base_url.rstrip("/") + "/", config.auth.token_url.lstrip("/")),
            config.auth.client_id,
            resolve_secret(config.auth.client_secret).get_secret_value(),
            scope=config.auth.scope,
            margin=config.auth.refresh_margin_seconds,
        )
    elif isinstance(config.auth, BearerToken):
        auth = None
        headers["Authorization"] = f"Bearer {resolve_secret(config.auth.token).get_secret_value()}"
    client = build_client(config.base_url, auth=auth, headers=headers)
    return HubSpotContactsReader(
        client,
        source_name=name,
        properties=config.properties,
        primary_key=config.primary_key,
        cursor_field=config.cursor_field,
        page_size=config.page_size,
        search_cap=config.search_cap,
        overlap=timedelta(seconds=config.overlap_seconds),
        max_pages=config.max_pages,
    )


def _open_sql(name: str, config: SqlSource) -> SourceReader:
    return SqlTableReader(
        config.url,
        source_name=name,
        table=config.table,
        primary_key=config.primary_key,
        cursor_field=config.cursor_field,
        chunk_size=config.chunk_size,
    )


def _open_files(name: str, config: FileDropSource) -> SourceReader:
    return FileDropReader(
        config.path,
        source_name=name,
        file_format=config.format,
        pattern=config.pattern,
        primary_key=config.primary_key,
    )


SOURCE_READERS: dict[str, Callable[[str, Any], SourceReader]] = {
    "hubspot_contacts": _open_hubspot,
    "sql": _open_sql,
    "files": _open_files,
}


def open_source(name: str, config: Source) -> SourceReader:
    """The reader for a configured source."""
    return SOURCE_READERS[config.kind](name, config)
