"""File drops: CSV or NDJSON (optionally gzipped) landed by a third party in a folder.

Each file is one batch whose id is its name plus a digest of its content, committed with the
data (a Delta transaction id), so a file is ingested exactly once even across crashes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl

from tasks.connectors.sources.base import SourceBatch, WriteMode
from tasks.errors import SourceError


def file_batch_id(source_name: str, path: Path, content: bytes) -> str:
    digest = hashlib.sha256(content).hexdigest()[:20]
    return f"{source_name}:{path.name}:{len(content)}:{digest}"


class FileDropReader:
    write_mode: WriteMode = "append_once"
    cursor_field: str | None = None

    def __init__(
        self,
        folder: str,
        *,
        source_name: str,
        file_format: str,
        pattern: str = "*",
        primary_key: str | None = None,
    ) -> None:
        self._folder = Path(folder)
        self._name = source_name
        self._format = file_format
        self._pattern = pattern
        self.primary_key = primary_key

    def close(self) -> None:
        """Nothing held open between reads."""

    def batches(
        self, *, since: str | None, is_committed: Callable[[str], bool]
    ) -> Iterator[SourceBatch]:
        del since  # files are tracked one by one, not by a cursor
        if not self._folder.is_dir():
            raise SourceError(f"source {self._name!r}: drop folder {self._folder} does not exist")
        for path in sorted(p for p in self._folder.glob(self._pattern) if p.is_file()):
            content = path.read_bytes()
            batch_id = file_batch_id(self._name, path, content)
            if is_committed(batch_id):
                continue
            frame = self._parse(path, content).with_columns(pl.lit(path.name).alias("_file"))
            yield SourceBatch(frame, batch_id=batch_id, origin=str(path))

    def _parse(self, path: Path, content: bytes) -> pl.DataFrame:
        try:
            if path.suffix == ".gz":
                content = gzip.decompress(content)
            if self._format == "csv":
                return pl.read_csv(io.BytesIO(content), infer_schema=False)
            rows = [json.loads(line) for line in content.decode("utf-8").splitlines() if line]
        except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
            raise SourceError(f"source {self._name!r}: cannot parse {path}: {exc}") from exc
        if not all(isinstance(r, dict) for r in rows):
            raise SourceError(f"source {self._name!r}: {path}: every line must be a JSON object")
        columns = list(dict.fromkeys(k for r in rows for k in r))
        data = {
            c: [None if r.get(c) is None else _as_text(r.get(c)) for r in rows] for c in columns
        }
        return pl.DataFrame(data, schema={c: pl.String for c in columns})


def _as_text(value: object) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)
