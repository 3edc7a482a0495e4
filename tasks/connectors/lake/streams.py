"""Overwriting a table from a stream of frames in one commit, without holding them all at once.

A :class:`FrameStream` given to :meth:`~tasks.connectors.lake.Lake.overwrite` in place of a
frame replaces the table with the frames it yields: deltalake writes data files as the frames
come (:func:`~tasks.connectors.lake.writes.overwrite_streamed`) and commits once after the last,
so memory follows a frame, not the table, and readers see the old table until the new one is
complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import polars as pl
from deltalake import DeltaTable

from tasks.connectors.lake import writes
from tasks.connectors.lake.base import LakeBase
from tasks.connectors.lake.commits import commit_properties
from tasks.errors import LakeError

__all__ = ["FrameStream", "LakeStreams"]


@dataclass(frozen=True)
class FrameStream:
    """The frames of a table to write, produced one at a time.

    ``schema`` is the table's (each frame is cast to it; it is also the schema of a table the
    stream leaves empty). ``frames`` is called again if the write has to be rerun after losing
    its commit race to a compaction, so it must give the same frames each time (read them from
    files, not from a spent iterator).
    """

    schema: Mapping[str, pl.DataType]
    frames: Callable[[], Iterable[pl.DataFrame]]


class LakeStreams(LakeBase):
    """The streamed writes of :class:`~tasks.connectors.lake.Lake`."""

    def _overwrite_streamed(
        self, table: str, stream: FrameStream, metadata: Mapping[str, str] | None, *, whole: bool
    ) -> None:
        """:meth:`~tasks.connectors.lake.Lake.overwrite` (``whole`` table) from ``stream``."""
        if not whole:
            raise LakeError(f"overwrite {table!r}: a stream replaces a whole table")
        with self._locked(table), self._errors(table, "overwrite"), self._audited(table):
            delta = self._load(table)
            empty = self._prepare(table, pl.DataFrame(schema=dict(stream.schema)), delta)

            def prepared() -> Iterator[pl.DataFrame]:
                for frame in stream.frames():
                    if frame.height:
                        data = self._prepare(table, frame.select(empty.columns), delta)
                        yield data.cast(empty.schema)

            def overwrite(target: DeltaTable | str) -> None:
                writes.overwrite_streamed(
                    target,
                    empty,
                    prepared(),
                    options=self._delta_options(),
                    properties=commit_properties(metadata),
                )

            if delta is None:
                overwrite(self.uri(table))
            else:
                self._rerun_after_maintenance(table, overwrite)
