"""Tables in transaction databases, read in chunks by keyset on ``(cursor, primary key)``.

Keyset pagination means rows that share a cursor value at a chunk boundary are never skipped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from tasks.connectors.sources.base import SourceBatch, WriteMode
from tasks.errors import SourceError


def sqlite_path(url: str) -> Path:
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise SourceError(f"unsupported database URL {url!r}: expected sqlite:///path")
    return Path(url[len(prefix) :])


class SqlTableReader:
    write_mode: WriteMode = "merge"

    def __init__(
        self,
        url: str,
        *,
        source_name: str,
        table: str,
        primary_key: str,
        cursor_field: str,
        chunk_size: int = 10_000,
    ) -> None:
        self._path = sqlite_path(url)
        self._name = source_name
        self._table = table
        self.primary_key = primary_key
        self.cursor_field = cursor_field
        self._chunk = chunk_size

    def close(self) -> None:
        """Connections are opened per read; nothing to release."""

    def batches(
        self, *, since: str | None, is_committed: Callable[[str], bool]
    ) -> Iterator[SourceBatch]:
        del is_committed
        if not self._path.exists():
            raise SourceError(f"source {self._name!r}: database file {self._path} does not exist")
        # Read-only URI: an ingest must never change the source.
        conn = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True)
        try:
            yield from self._chunks(conn, since)
        except sqlite3.Error as exc:
            raise SourceError(f"source {self._name!r}: table {self._table!r}: {exc}") from exc
        finally:
            conn.close()

    def _chunks(self, conn: sqlite3.Connection, since: str | None) -> Iterator[SourceBatch]:
        cur, pk, table = self.cursor_field, self.primary_key, self._table
        first_where = "" if since is None else f'WHERE "{cur}" >= ?'
        params: list[Any] = [] if since is None else [since]
        query = f'SELECT * FROM "{table}" {first_where} ORDER BY "{cur}", "{pk}" LIMIT ?'
        while True:
            rows = conn.execute(query, [*params, self._chunk])
            columns = [d[0] for d in rows.description]
            data = rows.fetchall()
            if not data:
                return
            frame = pl.DataFrame(data, schema=columns, orient="row", infer_schema_length=None)
            yield SourceBatch(frame, origin=table)
            if len(data) < self._chunk:
                return
            last = dict(zip(columns, data[-1], strict=True))
            query = (
                f'SELECT * FROM "{table}" WHERE ("{cur}" > ? OR ("{cur}" = ? AND "{pk}" > ?)) '
                f'ORDER BY "{cur}", "{pk}" LIMIT ?'
            )
            params = [last[cur], last[cur], last[pk]]
