"""Writing a table from a stream of frames in one commit, without holding them all at once.

:meth:`LakeStreams.overwrite_batches` replaces a table with the frames a generator yields:
deltalake reads them through an Arrow record batch reader, one batch at a time, writes data
files as it goes and commits once at the end, so memory follows a frame, not the table, and
readers see the old table until the new one is complete. The Arrow objects are arro3's (the
Arrow implementation deltalake itself uses; no pyarrow).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import polars as pl
from arro3.core import RecordBatch, RecordBatchReader, Schema, Table
from deltalake import CommitProperties, DeltaTable, write_deltalake

from tasks.connectors.lake.base import LakeBase
from tasks.connectors.lake.commits import commit_properties

__all__ = ["LakeStreams", "overwrite_from_batches"]


class LakeStreams(LakeBase):
    """The streamed writes of :class:`~tasks.connectors.lake.Lake`."""

    def overwrite_batches(
        self,
        table: str,
        schema: Mapping[str, pl.DataType],
        batches: Callable[[], Iterable[pl.DataFrame]],
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Replace the table's contents with the frames ``batches()`` yields, in one commit.

        Like :meth:`~tasks.connectors.lake.Lake.overwrite` without a predicate: ``schema`` (the
        frames' columns and types, each frame is cast to it) becomes the table's schema, and no
        frames at all leave the table empty. ``batches`` is called again if the write has to be
        rerun after losing its commit race to a compaction, so it must give the same frames
        each time (read them from files, not from a spent iterator).
        """
        with self._locked(table), self._errors(table, "overwrite"), self._audited(table):
            delta = self._load(table)
            empty = self._prepare(table, pl.DataFrame(schema=dict(schema)), delta)

            def prepared() -> Iterator[pl.DataFrame]:
                for frame in batches():
                    if frame.height:
                        yield self._prepare(table, frame.select(empty.columns), delta).cast(
                            empty.schema
                        )

            def overwrite(target: DeltaTable | str) -> None:
                overwrite_from_batches(
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


def overwrite_from_batches(
    target: DeltaTable | str,
    empty: pl.DataFrame,
    frames: Iterable[pl.DataFrame],
    *,
    options: dict[str, str] | None,
    properties: CommitProperties,
) -> None:
    """Replace the table with ``frames`` (all of ``empty``'s schema) in one commit, streamed."""
    creating = not isinstance(target, DeltaTable)
    schema = Table.from_arrow(empty).schema
    write_deltalake(
        target,
        RecordBatchReader.from_batches(schema, _record_batches(frames, schema)),
        mode="overwrite",
        schema_mode="overwrite",
        storage_options=options if creating else None,
        commit_properties=properties,
    )


def _record_batches(frames: Iterable[pl.DataFrame], schema: Schema) -> Iterator[RecordBatch]:
    """The Arrow record batches of each frame in turn (a frame is converted when it is reached)."""
    for frame in frames:
        for batch in Table.from_arrow(frame).to_batches():
            if batch.schema != schema:
                raise ValueError(f"a frame's Arrow schema {batch.schema} is not {schema}")
            yield batch
