"""What every source reader yields, and how the ingest task drives it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import polars as pl

from tasks.core.drift import Rejection

# merge: upsert on the primary key (entities); append_once: one Delta commit per batch id
# (files); insert_new: per batch id, insert only primary keys bronze lacks (at-least-once events).
WriteMode = Literal["merge", "append_once", "insert_new"]


@dataclass(frozen=True)
class SourceBatch:
    """Rows read from a source, all columns as extracted.

    ``batch_id`` is set for sources written exactly once per batch (a file, a delivery); entity
    sources leave it ``None`` and are merged on their primary key.

    ``rejected`` is set (and ``frame`` empty) when the whole batch could not be read, e.g. a
    corrupt file: the ingest task quarantines it and records its batch id so it is not retried.
    ``rejections`` are single raw records the reader could not parse; the rest of the batch is in
    ``frame``. Both go to ``ops/quarantine``: nothing is dropped silently.

    ``covers`` lists further batch ids recorded in the same commit as ``batch_id`` (an
    ``insert_new`` reader coalescing several landed files into one write: each file is then
    recorded as committed, exactly when its rows are).
    """

    frame: pl.DataFrame
    batch_id: str | None = None
    origin: str = ""
    rejected: Rejection | None = None
    rejections: tuple[Rejection, ...] = ()
    covers: tuple[str, ...] = ()


class SourceReader(Protocol):
    """A configured source. ``since`` is the raw watermark (max cursor committed in bronze)."""

    @property
    def write_mode(self) -> WriteMode: ...

    @property
    def primary_key(self) -> str | None: ...

    @property
    def cursor_field(self) -> str | None: ...

    def batches(
        self, *, since: str | None, is_committed: Callable[[str], bool]
    ) -> Iterator[SourceBatch]: ...

    def close(self) -> None: ...


def strings_frame(rows: list[dict[str, object]], columns: list[str]) -> pl.DataFrame:
    """Rows as a frame of String columns in a fixed order (bronze keeps values as extracted)."""
    data = {c: [None if r.get(c) is None else str(r.get(c)) for r in rows] for c in columns}
    return pl.DataFrame(data, schema={c: pl.String for c in columns})
