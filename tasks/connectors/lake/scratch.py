"""Scratch files of one run on the lake's own storage: what units of work hand each other.

Units running in other processes or on other machines (Dask workers) cannot share a local
temporary directory with the flow, but they all reach the lake. A :class:`Scratch` is a folder
``<lake root>/.scratch/<name>`` of plain parquet files, written and read with polars and the
lake's storage options. Its name starts with a dot, so it is never taken for a Delta table:
:mod:`.listing` skips hidden folders on a local disk and accepts only ``[a-z0-9_]`` layer
names on S3, and every other tool (maintenance, purge, the doctor) works on listed tables only.
The run that made it removes it (:meth:`Scratch.remove`), on failure too.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from typing import Any

import polars as pl

from tasks.connectors.s3 import s3_client, split_s3_uri
from tasks.errors import LakeError

__all__ = ["SCRATCH_FOLDER", "Scratch"]

SCRATCH_FOLDER = ".scratch"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_FILE = re.compile(r"[A-Za-z0-9_*-]+\.parquet")
_S3_DELETE_BATCH = 1000  # DeleteObjects accepts at most 1000 keys per call


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

    def scan(self, pattern: str) -> pl.LazyFrame:
        """The files matching ``pattern`` (e.g. ``links-*.parquet``), as one frame."""
        return pl.scan_parquet(self.path(pattern), storage_options=self.read_options)

    def read(self, file: str) -> pl.DataFrame:
        return self.scan(file).collect()

    def remove(self) -> int:
        """Delete the folder and everything in it; returns the number of files deleted."""
        if not self.remote:
            if not os.path.isdir(self.uri):
                return 0
            count = sum(len(files) for _, _, files in os.walk(self.uri))
            shutil.rmtree(self.uri)
            return count
        bucket, prefix = split_s3_uri(self.uri)
        client = s3_client(self.storage_options, read_timeout=30.0)
        keys = [
            entry["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=f"{prefix}/"
            )
            for entry in page.get("Contents", [])
        ]
        for start in range(0, len(keys), _S3_DELETE_BATCH):
            chunk = keys[start : start + _S3_DELETE_BATCH]
            client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
            )
        return len(keys)
