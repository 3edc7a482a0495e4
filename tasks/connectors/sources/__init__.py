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
from tasks.connectors.sources.events import open_event_reader
from tasks.connectors.sources.files import open_file_drop
from tasks.connectors.sources.hubspot import HubSpotContactsReader
from tasks.connectors.sources.rest import open_rest_source
from tasks.connectors.sources.sql import open_sql_source
from tasks.core.config import (
    BearerToken,
    HubSpotContactsSource,
    Source,
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


SOURCE_READERS: dict[str, Callable[[str, Any], SourceReader]] = {
    "hubspot_contacts": _open_hubspot,
    "sql": open_sql_source,
    "files": open_file_drop,
    "events": open_event_reader,
    "rest": open_rest_source,
}


def open_source(name: str, config: Source) -> SourceReader:
    """The reader for a configured source."""
    return SOURCE_READERS[config.kind](name, config)
