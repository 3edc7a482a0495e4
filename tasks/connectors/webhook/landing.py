"""The landing zone: write-once micro-batch files under one root, on disk or on S3.

A file is created only if absent (``os.link`` locally, ``If-None-Match: *`` on S3) and only if
no file of that name was archived, so a redelivered body lands once; the events reader lists,
reads and archives what landed.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from botocore.exceptions import ClientError

from tasks.connectors.s3 import (
    SseArguments,
    is_s3_uri,
    s3_client,
    split_s3_uri,
    sse_put_arguments,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass(frozen=True)
class LandedObject:
    """One landed micro-batch file: its name under the landing root and when it landed."""

    name: str
    location: str
    size: int
    landed_at: datetime


class Landing(Protocol):
    """Where micro-batches land: write-once files under one root."""

    @property
    def location(self) -> str: ...

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Write ``name`` unless it exists, landed or archived; True if this call created it."""
        ...

    def list(self, pattern: str) -> list[LandedObject]:
        """Files directly under the root matching ``pattern``, oldest first."""
        ...

    def read(self, name: str) -> bytes: ...

    def archive(self, name: str) -> None:
        """Move a file whose rows are committed to ``archive/`` (out of :meth:`list`'s sight)."""
        ...


ARCHIVE = "archive"


class LocalLanding:
    """A landing folder on a local (or mounted) file system."""

    def __init__(self, folder: str | Path) -> None:
        self._folder = Path(str(folder).removeprefix("file://")).expanduser().absolute()

    @property
    def location(self) -> str:
        return str(self._folder)

    def put_if_absent(self, name: str, data: bytes) -> bool:
        _check_name(name)
        final = self._folder / name
        # A body whose file was committed and archived was delivered: it must not land again.
        if final.exists() or (self._folder / ARCHIVE / name).exists():
            return False
        staging = self._folder / ".incoming"
        staging.mkdir(parents=True, exist_ok=True)
        temp = staging / f"{name}.{uuid.uuid4().hex}.tmp"
        try:
            with temp.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                # link() never replaces: the file appears whole, once, or not at all.
                os.link(temp, final)
            except FileExistsError:
                return False
            _fsync_dir(self._folder)
            return True
        finally:
            temp.unlink(missing_ok=True)

    def list(self, pattern: str) -> list[LandedObject]:
        if not self._folder.is_dir():
            return []
        found: list[LandedObject] = []
        with os.scandir(self._folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                if not fnmatch.fnmatchcase(entry.name, pattern):
                    continue
                stat = entry.stat()
                found.append(
                    LandedObject(
                        name=entry.name,
                        location=entry.path,
                        size=stat.st_size,
                        landed_at=datetime.fromtimestamp(stat.st_mtime, UTC),
                    )
                )
        return sorted(found, key=lambda o: (o.landed_at, o.name))

    def read(self, name: str) -> bytes:
        _check_name(name)
        return (self._folder / name).read_bytes()

    def archive(self, name: str) -> None:
        _check_name(name)
        target = self._folder / ARCHIVE
        target.mkdir(exist_ok=True)
        # replace(): a redelivery racing the archiving of its first copy may have landed again
        # (with identical content, skipped by the reader as committed); the copies are equal.
        os.replace(self._folder / name, target / name)


class S3Landing:
    """A landing prefix on S3 or an S3-compatible store (conditional PUT required)."""

    def __init__(self, uri: str, client: S3Client, *, sse: SseArguments | None = None) -> None:
        self._bucket, self._prefix = split_s3_uri(uri)
        self._client = client
        # Landed files and their archive copies get the lake's server-side encryption.
        self._sse: SseArguments = sse or {}

    @property
    def location(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}".rstrip("/")

    def _key(self, name: str) -> str:
        _check_name(name)
        return f"{self._prefix}/{name}" if self._prefix else name

    def put_if_absent(self, name: str, data: bytes) -> bool:
        if self._exists(self._key(ARCHIVE) + "/" + name):
            return False  # delivered before, committed and archived
        try:
            self._client.put_object(
                Bucket=self._bucket,
                Key=self._key(name),
                Body=data,
                IfNoneMatch="*",
                ContentType="application/x-ndjson",
                **self._sse,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"PreconditionFailed", "412"}:
                return False  # already landed: the same body was delivered before
            raise
        return True

    def _exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        return True

    def list(self, pattern: str) -> list[LandedObject]:
        base = f"{self._prefix}/" if self._prefix else ""
        found: list[LandedObject] = []
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=base, Delimiter="/"):
            for item in page.get("Contents", []):
                name = item.get("Key", "")[len(base) :]
                if not name or name.startswith(".") or not fnmatch.fnmatchcase(name, pattern):
                    continue
                modified = item.get("LastModified") or datetime.fromtimestamp(0, UTC)
                found.append(
                    LandedObject(
                        name=name,
                        location=f"s3://{self._bucket}/{base}{name}",
                        size=int(item.get("Size", 0)),
                        landed_at=modified.astimezone(UTC),
                    )
                )
        return sorted(found, key=lambda o: (o.landed_at, o.name))

    def read(self, name: str) -> bytes:
        response = self._client.get_object(Bucket=self._bucket, Key=self._key(name))
        return response["Body"].read()

    def archive(self, name: str) -> None:
        # Copy, then delete: a crash in between leaves the file in place, to be skipped (it is
        # committed) and archived by the next run.
        source = self._key(name)
        self._client.copy_object(
            Bucket=self._bucket,
            Key=self._key(ARCHIVE) + "/" + name,
            CopySource={"Bucket": self._bucket, "Key": source},
            **self._sse,
        )
        self._client.delete_object(Bucket=self._bucket, Key=source)


def open_landing(location: str, storage_options: Mapping[str, str] | None = None) -> Landing:
    """The landing zone at ``location`` (folder or ``s3://bucket/prefix``)."""
    if is_s3_uri(location):
        options = storage_options or {}
        client = s3_client(options, connect_timeout=3.0, read_timeout=30.0)
        return S3Landing(location, client, sse=sse_put_arguments(options))
    return LocalLanding(location)


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid landing file name {name!r}")


def _fsync_dir(folder: Path) -> None:
    # Make the new directory entry durable (a no-op where directories cannot be opened).
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
