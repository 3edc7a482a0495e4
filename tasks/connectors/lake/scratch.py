"""Scratch files of one run on the lake's own storage: what units of work hand each other.

Units running in other processes or on other machines (Dask workers) cannot share a local
temporary directory with the flow, but they all reach the lake. A :class:`Scratch` is a folder
``<lake root>/.scratch/<name>`` of plain parquet files, written and read with polars and the
lake's storage options. Its name starts with a dot, so it is never taken for a Delta table:
:mod:`.listing` skips hidden folders on a local disk and accepts only ``[a-z0-9_]`` layer
names on S3, and every other tool (maintenance, purge, the doctor) works on listed tables only.

A scratch folder holds copies of staged rows (emails included), so it must not outlive its run:

- the run that made it removes it (:meth:`Scratch.remove`), on failure too, and deletes each
  bucket's files as soon as they are committed (:meth:`Scratch.delete`);
- a run that was killed cannot: the next bucketed build removes every folder in which nothing
  was written for :data:`STALE_AFTER` (a running build writes a file per bucket, minutes apart),
  and an erasure removes every scratch folder there is (erasures run when no pipeline run is
  in progress), so an erased person's rows do not survive in a killed run's leftovers.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from tasks.connectors.s3 import s3_client, split_s3_uri
from tasks.errors import LakeError

__all__ = ["SCRATCH_FOLDER", "STALE_AFTER", "Scratch", "scratch_folders"]

SCRATCH_FOLDER = ".scratch"
STALE_AFTER = timedelta(hours=6)
"""A scratch folder with no file written for this long belongs to no running build."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_FILE = re.compile(r"[A-Za-z0-9_*-]+\.parquet")
_S3_DELETE_BATCH = 1000  # DeleteObjects accepts at most 1000 keys per call
# Rows a split buffers per open file before writing a row group (it holds one per part).
_SPLIT_ROW_GROUP = 50_000


@dataclass(frozen=True)
class Scratch:
    """The scratch folder ``name`` of the lake at ``root`` (build it with ``Lake.scratch``).

    ``storage_options``: the lake's object_store options (removal lists and deletes with
    them); ``read_options``: their polars spelling. Both hold credentials: a scratch folder is
    rebuilt from its lake where it is used, never sent anywhere.
    """

    root: str
    name: str
    storage_options: dict[str, str]
    read_options: dict[str, Any] | None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise LakeError(f"invalid scratch name {self.name!r} in lake {self.root}")

    def __repr__(self) -> str:  # never show the options: they hold credentials
        return f"Scratch(root={self.root!r}, name={self.name!r})"

    @property
    def remote(self) -> bool:
        return self.root.startswith("s3://")

    @property
    def uri(self) -> str:
        """The folder: a local path or ``s3://bucket/prefix/.scratch/<name>``."""
        if self.remote:
            return f"{self.root}/{SCRATCH_FOLDER}/{self.name}"
        return os.path.join(self.root, SCRATCH_FOLDER, self.name)

    def path(self, file: str) -> str:
        """The location of ``file`` (a parquet file name; ``*`` allowed, for :meth:`scan`)."""
        if not _FILE.fullmatch(file):
            raise LakeError(f"invalid scratch file name {file!r} in {self.uri}")
        return f"{self.uri}/{file}" if self.remote else os.path.join(self.uri, file)

    def write(self, file: str, df: pl.DataFrame) -> str:
        """Write ``df`` as ``file`` (replacing it); returns its location."""
        location = self.path(file)
        if self.remote:
            df.write_parquet(location, storage_options=self.read_options)
        else:
            os.makedirs(self.uri, exist_ok=True)
            df.write_parquet(location)
        return location

    def split(self, prefix: str, frame: pl.LazyFrame, key: str, parts: int) -> None:
        """Write the rows of ``frame`` in one streamed pass as ``<prefix>-<k>.parquet``, one
        file per value ``k`` (0 .. ``parts``-1) of its integer column ``key``, without that
        column. Every file exists afterwards (with no rows for a value no row has); rows of
        other values are not written. Each of the ``parts`` open files buffers at most one row
        group (:data:`_SPLIT_ROW_GROUP` rows) before writing it.
        """
        written: set[int] = set()

        def file_for(args: Any) -> str:
            value = args.partition_keys.get_column(key)[0]
            if value is None or not 0 <= value < parts or args.index_in_partition:
                raise LakeError(f"split of {prefix!r} in {self.uri}: unexpected part {value}")
            written.add(int(value))
            return f"{prefix}-{value}.parquet"

        if not self.remote:
            os.makedirs(self.uri, exist_ok=True)
        frame.filter(pl.col(key).is_between(0, parts - 1)).sink_parquet(
            pl.PartitionBy(
                self.uri,
                key=key,
                include_key=False,
                file_path_provider=file_for,
                approximate_bytes_per_file=None,
            ),
            row_group_size=_SPLIT_ROW_GROUP,
            storage_options=self.read_options if self.remote else None,
        )
        empty = pl.DataFrame(schema=frame.drop(key).collect_schema())
        for value in sorted(set(range(parts)) - written):
            self.write(f"{prefix}-{value}.parquet", empty)

    def scan(self, pattern: str) -> pl.LazyFrame:
        """The files matching ``pattern`` (e.g. ``links-*.parquet``), as one frame."""
        return pl.scan_parquet(self.path(pattern), storage_options=self.read_options)

    def read(self, file: str) -> pl.DataFrame:
        return self.scan(file).collect()

    def delete(self, *files: str) -> None:
        """Delete ``files`` (plain names, no pattern) if they exist."""
        locations = [self.path(f) for f in files if "*" not in f]
        if len(locations) != len(files):
            raise LakeError(f"scratch delete takes file names, not patterns: {files} in {self.uri}")
        if not self.remote:
            for location in locations:
                if os.path.exists(location):
                    os.remove(location)
            return
        bucket, _ = split_s3_uri(self.uri)
        _delete_keys(self._client(), bucket, [split_s3_uri(loc)[1] for loc in locations])

    def modified(self) -> datetime | None:
        """When a file was last written in the folder (None: the folder holds no file)."""
        stamps = [stamp for _, stamp in self._files()]
        return max(stamps) if stamps else None

    def remove(self) -> int:
        """Delete the folder and everything in it; returns the number of files deleted."""
        if not self.remote:
            if not os.path.isdir(self.uri):
                return 0
            count = sum(len(files) for _, _, files in os.walk(self.uri))
            shutil.rmtree(self.uri)
            return count
        bucket, _ = split_s3_uri(self.uri)
        keys = [key for key, _ in self._files()]
        _delete_keys(self._client(), bucket, keys)
        return len(keys)

    def _client(self) -> Any:
        return s3_client(self.storage_options, read_timeout=30.0)

    def _files(self) -> list[tuple[str, datetime]]:
        """Every file of the folder (local path or S3 key) and when it was last written."""
        if not self.remote:
            return [
                (path, datetime.fromtimestamp(os.path.getmtime(path), UTC))
                for folder, _, names in os.walk(self.uri)
                for path in (os.path.join(folder, n) for n in names)
            ]
        bucket, prefix = split_s3_uri(self.uri)
        return [
            (entry["Key"], entry["LastModified"])
            for page in self._client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=bucket, Prefix=f"{prefix}/")
            for entry in page.get("Contents", [])
        ]


def scratch_folders(
    root: str, storage_options: dict[str, str], read_options: dict[str, Any] | None
) -> list[Scratch]:
    """Every scratch folder of the lake at ``root``, by name (folders of other names are not
    the engine's and are left out)."""
    if not root.startswith("s3://"):
        base = os.path.join(root, SCRATCH_FOLDER)
        names = sorted(os.listdir(base)) if os.path.isdir(base) else []
        names = [n for n in names if os.path.isdir(os.path.join(base, n))]
    else:
        bucket, prefix = split_s3_uri(f"{root}/{SCRATCH_FOLDER}")
        client = s3_client(storage_options, read_timeout=30.0)
        names = sorted(
            common["Prefix"][len(prefix) + 1 :].rstrip("/")
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=f"{prefix}/", Delimiter="/"
            )
            for common in page.get("CommonPrefixes", [])
        )
    return [
        Scratch(root, name, dict(storage_options), read_options)
        for name in names
        if _NAME.fullmatch(name)
    ]


def _delete_keys(client: Any, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), _S3_DELETE_BATCH):
        chunk = keys[start : start + _S3_DELETE_BATCH]
        client.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
        )
