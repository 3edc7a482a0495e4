"""File drops: CSV, NDJSON or Parquet files (optionally gzipped) landed by a third party.

The drop lives in a local folder or under an S3 prefix (:class:`LocalDropStore`,
:class:`S3DropStore`). Each object *version* is one batch whose id is its key plus its version
(ETag and size on S3, size and content hash locally). The ingest task commits that id with the
rows (a Delta transaction id), so an object is ingested exactly once even across crashes, and a
changed object (new version) is ingested again.

A file that cannot be read at all (bad gzip, not UTF-8, not Parquet, nothing parseable) or that
lacks a required column is yielded as a *rejected* batch: the ingest task quarantines it whole,
records its id, and goes on with the next file. Single records that cannot be parsed (a broken
NDJSON line, a CSV row with the wrong number of fields) are yielded as rejections beside the
file's good rows.
"""

from __future__ import annotations

import csv
import fnmatch
import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import polars as pl
from botocore.exceptions import BotoCoreError, ClientError

from tasks.connectors.lake import s3_storage_options, settings_storage_options
from tasks.connectors.s3 import is_s3_uri, s3_client, split_s3_uri
from tasks.connectors.sources.base import SourceBatch, WriteMode
from tasks.core.config import FileDropS3, FileDropSource
from tasks.core.drift import SCHEMA_VIOLATION, UNPARSEABLE_RECORD, UNREADABLE_FILE, Rejection
from tasks.core.settings import load_settings, resolve_secret
from tasks.errors import SourceError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "DropObject",
    "DropStore",
    "FileDropReader",
    "LocalDropStore",
    "S3DropStore",
    "UnreadableFile",
    "file_batch_id",
    "open_file_drop",
    "parse_drop",
]

FileFormat = Literal["csv", "ndjson", "parquet"]
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_RAW_CHARS = 2000


class UnreadableFile(Exception):
    """A drop file that cannot be read at all; the message says why."""


@dataclass(frozen=True)
class DropObject:
    """One file of a drop.

    Attributes:
        key: path relative to the folder/prefix, ``/``-separated.
        size: bytes.
        version: what identifies this version of the object before reading it (``size:etag``
            on S3); None when only the content can tell (local files are hashed).
    """

    key: str
    size: int
    version: str | None = None


class DropStore(Protocol):
    """Where drop files are listed and read from."""

    @property
    def location(self) -> str:
        """The folder or ``s3://bucket/prefix``, for messages."""
        ...

    def list(self) -> Iterator[DropObject]:
        """Every file under the location, in key order."""
        ...

    def read(self, obj: DropObject) -> tuple[bytes, str] | None:
        """The content and version of ``obj``; None if it vanished since it was listed."""
        ...

    def origin(self, key: str) -> str:
        """A readable full name of ``key`` (a path or ``s3://`` URI)."""
        ...


class LocalDropStore:
    """Files under a local folder; versions are ``size:sha256-prefix`` of the content."""

    def __init__(self, folder: str | Path) -> None:
        self._folder = Path(folder)

    @property
    def location(self) -> str:
        return str(self._folder)

    def list(self) -> Iterator[DropObject]:
        if not self._folder.is_dir():
            raise FileNotFoundError(f"drop folder {self._folder} does not exist")
        paths = sorted(p for p in self._folder.rglob("*") if p.is_file())
        for path in paths:
            key = path.relative_to(self._folder).as_posix()
            if _hidden(key):
                continue
            yield DropObject(key=key, size=path.stat().st_size)

    def read(self, obj: DropObject) -> tuple[bytes, str] | None:
        try:
            content = (self._folder / obj.key).read_bytes()
        except FileNotFoundError:
            return None
        digest = hashlib.sha256(content).hexdigest()[:20]
        return content, f"{len(content)}:{digest}"

    def origin(self, key: str) -> str:
        return str(self._folder / key)


class S3DropStore:
    """Objects under an S3 prefix; versions are ``size:etag`` (no download needed to skip)."""

    def __init__(self, client: S3Client, bucket: str, prefix: str = "") -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = prefix.strip("/")

    @property
    def location(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}".rstrip("/")

    def list(self) -> Iterator[DropObject]:
        base = f"{self._prefix}/" if self._prefix else ""
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=base):
            for entry in page.get("Contents", []):
                key = entry.get("Key", "")[len(base) :]
                if not key or key.endswith("/") or _hidden(key):
                    continue  # "folder" markers and hidden/temporary uploads
                size = int(entry.get("Size", 0))
                yield DropObject(key=key, size=size, version=_s3_version(size, entry.get("ETag")))

    def read(self, obj: DropObject) -> tuple[bytes, str] | None:
        full_key = f"{self._prefix}/{obj.key}" if self._prefix else obj.key
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=full_key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return None
            raise
        with response["Body"] as body:
            content = body.read()
        # The version read, not the one listed: the object may have been replaced in between.
        return content, _s3_version(len(content), response.get("ETag"))

    def origin(self, key: str) -> str:
        return f"{self.location}/{key}"


def file_batch_id(source_name: str, key: str, version: str) -> str:
    """The batch id of one object version: ``<source>:<key>:<version>``."""
    return f"{source_name}:{key}:{version}"


class FileDropReader:
    """Yields one batch per new object version under a drop location.

    Args:
        store: a :class:`DropStore`, or a local folder path.
        source_name: for batch ids and messages.
        file_format: ``csv`` (all columns as text), ``ndjson`` (values as text, nested values as
            JSON) or ``parquet`` (typed as written).
        pattern: glob matched against each key relative to the location.
        primary_key: a column every file must have.
        required_columns: further columns every file must have.
        csv_separator: CSV field separator.
        max_files: at most this many files are read per run (the rest wait for the next run).
    """

    write_mode: WriteMode = "append_once"
    cursor_field: str | None = None

    def __init__(
        self,
        store: DropStore | str,
        *,
        source_name: str,
        file_format: str,
        pattern: str = "*",
        primary_key: str | None = None,
        required_columns: Sequence[str] = (),
        csv_separator: str = ",",
        max_files: int = 10_000,
    ) -> None:
        if file_format not in ("csv", "ndjson", "parquet"):
            raise SourceError(
                f"source {source_name!r}: unsupported file format {file_format!r}; "
                "expected csv, ndjson or parquet"
            )
        self._store: DropStore = LocalDropStore(store) if isinstance(store, str) else store
        self._name = source_name
        self._format: FileFormat = file_format  # type: ignore[assignment]
        self._pattern = pattern
        self.primary_key = primary_key
        self._required = list(
            dict.fromkeys([*([primary_key] if primary_key else []), *required_columns])
        )
        self._separator = csv_separator
        self._max_files = max_files

    def __repr__(self) -> str:
        return f"FileDropReader({self._name!r}, {self._store.location!r}, {self._format})"

    def close(self) -> None:
        """Nothing held open between reads."""

    def probe(self) -> str:
        """List the drop location (reads no file): where it is and how many objects it holds.

        Raises:
            SourceError: naming the source and the location when it cannot be listed.
        """
        try:
            count = sum(1 for _ in self._store.list())
        except Exception as exc:  # any listing failure (missing folder, S3 denied) is the answer
            raise SourceError(
                f"source {self._name!r}: cannot list {self._store.location}: {_first_line(exc)}"
            ) from None
        return f"{self._store.location} lists ({count} objects)"

    def batches(
        self, *, since: str | None, is_committed: Callable[[str], bool]
    ) -> Iterator[SourceBatch]:
        del since  # files are tracked one by one, not by a cursor
        new = 0
        for obj in self._matching():
            if obj.version is not None and is_committed(
                file_batch_id(self._name, obj.key, obj.version)
            ):
                continue
            if new >= self._max_files:
                return  # the rest waits for the next run
            try:
                got = self._store.read(obj)
            except (OSError, ClientError, BotoCoreError) as exc:
                raise SourceError(
                    f"source {self._name!r}: cannot read {self._store.origin(obj.key)}: {exc}"
                ) from exc
            if got is None:
                continue  # removed since listing: nothing to ingest
            content, version = got
            batch_id = file_batch_id(self._name, obj.key, version)
            if version != obj.version and is_committed(batch_id):
                continue
            new += 1
            yield self._batch(obj.key, version, batch_id, content)

    def _matching(self) -> Iterator[DropObject]:
        try:
            for obj in self._store.list():
                if fnmatch.fnmatchcase(obj.key, self._pattern):
                    yield obj
        except FileNotFoundError as exc:
            raise SourceError(f"source {self._name!r}: {exc}") from exc
        except (ClientError, BotoCoreError) as exc:
            raise SourceError(
                f"source {self._name!r}: cannot list {self._store.location}: {exc}"
            ) from exc

    def _batch(self, key: str, version: str, batch_id: str, content: bytes) -> SourceBatch:
        origin = self._store.origin(key)
        try:
            frame, rejections = parse_drop(
                content, file_format=self._format, origin=key, csv_separator=self._separator
            )
            missing = [c for c in self._required if c not in frame.columns]
            if missing:
                return SourceBatch(
                    pl.DataFrame(),
                    batch_id=batch_id,
                    origin=origin,
                    rejected=Rejection(
                        SCHEMA_VIOLATION,
                        f"{key}: required column(s) {missing} missing; "
                        f"columns: {frame.columns[:50]}",
                        origin=key,
                        version=version,
                        column=missing[0],
                    ),
                )
        except UnreadableFile as exc:
            return SourceBatch(
                pl.DataFrame(),
                batch_id=batch_id,
                origin=origin,
                rejected=Rejection(UNREADABLE_FILE, f"{key}: {exc}", origin=key, version=version),
            )
        frame = frame.with_columns(pl.lit(key, pl.String).alias("_file"))
        return SourceBatch(frame, batch_id=batch_id, origin=origin, rejections=tuple(rejections))


def parse_drop(
    content: bytes, *, file_format: FileFormat, origin: str, csv_separator: str = ","
) -> tuple[pl.DataFrame, list[Rejection]]:
    """Rows of one drop file, and the raw records that could not be parsed.

    Raises:
        UnreadableFile: when the file as a whole cannot be read.
    """
    if content.startswith(_GZIP_MAGIC):
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError, zlib.error) as exc:
            raise UnreadableFile(f"not valid gzip: {exc}") from exc
    if not content:
        raise UnreadableFile("empty file")
    if file_format == "parquet":
        return _parse_parquet(content), []
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if file_format == "csv":
        return _parse_csv(text, origin=origin, separator=csv_separator)
    return _parse_ndjson(text, origin=origin)


def _parse_parquet(content: bytes) -> pl.DataFrame:
    try:
        return pl.read_parquet(io.BytesIO(content))
    except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
        raise UnreadableFile(f"not a readable Parquet file: {_first_line(exc)}") from exc
    except BaseException as exc:
        # polars surfaces a Rust panic on some malformed footers as PanicException.
        if type(exc).__name__ != "PanicException":
            raise
        raise UnreadableFile(f"not a readable Parquet file: {_first_line(exc)}") from exc


def _parse_csv(text: str, *, origin: str, separator: str) -> tuple[pl.DataFrame, list[Rejection]]:
    # Python's csv module rather than polars: it reports each row on its own, so one ragged row
    # is quarantined instead of failing (or silently padding) the whole file.
    lines = text.splitlines(keepends=True)
    reader = csv.reader(lines, delimiter=separator, strict=True)
    try:
        header = next(reader)
    except StopIteration as exc:
        raise UnreadableFile("no header row") from exc
    except csv.Error as exc:
        raise UnreadableFile(f"unreadable header: {exc}") from exc
    names = [h.strip() for h in header]
    if not any(names) or len(set(names)) != len(names) or "" in names:
        raise UnreadableFile(f"header must name each column once, got {names[:50]}")
    rows: list[list[str | None]] = []
    rejections: list[Rejection] = []
    start = reader.line_num  # lines consumed so far; a record spans lines[start:line_num]
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raw = "".join(lines[start : reader.line_num])
            rejections.append(_bad_record(origin, start + 1, raw, f"malformed CSV: {exc}"))
            start = reader.line_num
            continue
        raw = "".join(lines[start : reader.line_num])
        number = start + 1
        start = reader.line_num
        if not fields:
            continue  # blank line
        if len(fields) != len(names):
            reason = f"{len(fields)} field(s) where the header has {len(names)}"
            rejections.append(_bad_record(origin, number, raw, reason))
            continue
        rows.append([value if value != "" else None for value in fields])
    if not rows and rejections:
        raise UnreadableFile(f"no row could be parsed ({len(rejections)} malformed)")
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    frame = pl.DataFrame(
        {name: list(values) for name, values in zip(names, columns, strict=True)},
        schema={name: pl.String for name in names},
    )
    return frame, rejections


def _parse_ndjson(text: str, *, origin: str) -> tuple[pl.DataFrame, list[Rejection]]:
    records: list[dict[str, object]] = []
    rejections: list[Rejection] = []
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            rejections.append(_bad_record(origin, number, line, f"not JSON: {exc}"))
            continue
        if not isinstance(value, dict):
            reason = f"a JSON {type(value).__name__}, not an object"
            rejections.append(_bad_record(origin, number, line, reason))
            continue
        records.append(value)
    if not records:
        if rejections:
            raise UnreadableFile(f"no line is a JSON object ({len(rejections)} unparseable)")
        raise UnreadableFile("no records")
    columns = list(dict.fromkeys(k for r in records for k in r))
    data = {c: [None if r.get(c) is None else _as_text(r.get(c)) for r in records] for c in columns}
    return pl.DataFrame(data, schema={c: pl.String for c in columns}), rejections


def _bad_record(origin: str, number: int, raw: str, reason: str) -> Rejection:
    clipped = raw if len(raw) <= _MAX_RAW_CHARS else raw[:_MAX_RAW_CHARS] + " ..."
    return Rejection(
        UNPARSEABLE_RECORD,
        f"{origin} line {number}: {reason}",
        origin=origin,
        raw=clipped,
        position=number,
    )


def _as_text(value: object) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _hidden(key: str) -> bool:
    """Dot-files and dot-folders: partial uploads and tool metadata, never drops."""
    return any(part.startswith(".") for part in key.split("/"))


def _s3_version(size: int, etag: str | None) -> str:
    return f"{size}:{(etag or '').strip(chr(34))}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__


def open_file_drop(name: str, config: FileDropSource) -> FileDropReader:
    """The reader for a ``kind: files`` source: a local folder or an ``s3://`` prefix.

    An S3 drop uses its own ``s3:`` options if given, else the lake's S3 settings (endpoint,
    keys, region from the environment).
    """
    store: DropStore
    if is_s3_uri(config.path):
        bucket, prefix = split_s3_uri(config.path)
        options = _drop_storage_options(config.s3)
        client = s3_client(options, connect_timeout=5.0, read_timeout=60.0, max_attempts=3)
        store = S3DropStore(client, bucket, prefix)
    else:
        store = LocalDropStore(config.path)
    return FileDropReader(
        store,
        source_name=name,
        file_format=config.format,
        pattern=config.pattern,
        primary_key=config.primary_key,
        required_columns=config.required_columns,
        csv_separator=config.csv_separator,
        max_files=config.max_files_per_run,
    )


def _drop_storage_options(s3: FileDropS3 | None) -> dict[str, str]:
    if s3 is None:
        return settings_storage_options(load_settings())
    return s3_storage_options(
        endpoint=s3.endpoint,
        access_key_id=None
        if s3.access_key_id is None
        else resolve_secret(s3.access_key_id).get_secret_value(),
        secret_access_key=None
        if s3.secret_access_key is None
        else resolve_secret(s3.secret_access_key).get_secret_value(),
        region=s3.region,
        allow_http=s3.allow_http,
    )
