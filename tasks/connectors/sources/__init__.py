"""Source readers, selected by the ``kind`` of a source in ``pipeline.yaml``.

Adding a source kind = one reader class, one config model, one line in ``SOURCE_READERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tasks.connectors.sources.base import SourceBatch, SourceReader
from tasks.connectors.sources.events import open_event_reader
from tasks.connectors.sources.files import open_file_drop
from tasks.connectors.sources.rest import open_rest_source
from tasks.connectors.sources.sql import open_sql_source
from tasks.core.config import Source

__all__ = ["SOURCE_READERS", "SourceBatch", "SourceReader", "open_source"]

SOURCE_READERS: dict[str, Callable[[str, Any], SourceReader]] = {
    "sql": open_sql_source,
    "files": open_file_drop,
    "events": open_event_reader,
    "rest": open_rest_source,
}


def open_source(name: str, config: Source) -> SourceReader:
    """The reader for a configured source."""
    return SOURCE_READERS[config.kind](name, config)
