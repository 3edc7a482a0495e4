"""How the lake reports a failed operation: one readable line, and a specific error class where
the cause is known (a full disk, a refused credential, a damaged commit file).

deltalake, object_store and polars errors carry ANSI colours, tree art and (with
``RUST_BACKTRACE``) stack traces; :func:`clean` keeps the message. :func:`lake_error` turns an
exception into the :class:`~tasks.errors.LakeError` subclass a caller can act on.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable
from functools import partial
from typing import Literal

from tasks.connectors.s3 import s3_client, split_s3_uri
from tasks.errors import CorruptTableError, LakeError, LakeFullError, StoreAccessError

__all__ = ["TableNotFoundError", "clean", "lake_error"]

_COMMIT = re.compile(r"\d{20}\.json")
_SCANNED_COMMITS = 1000
# The first frame of a Rust backtrace ("   0: <unknown>", "stack backtrace:").
_BACKTRACE_START = re.compile(r"\s*(0: |stack backtrace:|Stack backtrace:)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MAX_ERROR_CHARS = 2000

ErrorKind = Literal["full", "denied", "corrupt_log", "other"]

# How a failure's cause shows in deltalake / object_store / polars messages (checked against
# deltalake 1.6.6: a full disk surfaces as "Failed to parse parquet: ... No space left on device
# (os error 28)"; a refused key as "403 Forbidden ... <Code>InvalidAccessKeyId</Code>"; a damaged
# commit as "Kernel error: Json error: ..."). First match wins: a full disk can also garble JSON.
_KINDS: tuple[tuple[ErrorKind, re.Pattern[str]], ...] = (
    ("full", re.compile(r"No space left on device|os error 28\b|\bENOSPC\b|disk quota", re.I)),
    (
        "denied",
        re.compile(
            r"\b403 Forbidden|status code 403\b|\bInvalidAccessKeyId\b|\bSignatureDoesNotMatch"
            r"|\bAccessDenied\b|\bInvalidToken\b|\bExpiredToken\b|lacked the necessary privileges",
        ),
    ),
    (
        "corrupt_log",
        re.compile(
            r"Json error|Invalid JSON|invalid json|EOF while parsing|expected value at line"
        ),
    ),
)
_S3_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")


class TableNotFoundError(LakeError):
    """The table does not exist (yet) in this lake."""


def clean(exc: BaseException) -> str:
    """One readable line from a deltalake error (they carry ANSI colours, tree art and, with
    ``RUST_BACKTRACE`` set, a stack trace, which is dropped)."""
    text = _ANSI.sub("", str(exc)) or type(exc).__name__
    lines = text.splitlines()
    frame = next((i for i, line in enumerate(lines) if _BACKTRACE_START.match(line)), len(lines))
    text = " ".join(line.strip().lstrip("↳").strip() for line in lines[:frame] if line.strip())
    if len(text) > _MAX_ERROR_CHARS:
        text = text[:_MAX_ERROR_CHARS] + " ..."
    return f"{type(exc).__name__}: {text}"


def lake_error(
    exc: BaseException,
    *,
    action: str,
    table: str,
    location: str,
    root: str,
    options: dict[str, str],
    log_uri: str | None,
) -> LakeError:
    """The LakeError for ``exc``: a specific, permanent class where the cause is known.

    Args:
        action: what was being done, e.g. ``"merge on ['id'] into"``.
        location: the table's URI (or the lake root when the name itself is invalid).
        log_uri: the table's ``_delta_log`` location, searched for a damaged commit; None when
            the table name is invalid.
    """
    where = f"table {table!r} ({location})"
    text = clean(exc)
    kind = _classify(exc, text)
    if kind == "full":
        return LakeFullError(
            f"no space left on the volume holding lake {root}: {action} {where} "
            "failed (ENOSPC); free space or move the lake, then rerun"
        )
    if kind == "denied":
        return StoreAccessError(
            f"the store refused access to {where}: {_refusal(text)}; check "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy "
            "(`audience-lake doctor` checks them)"
        )
    if kind == "corrupt_log":
        commit = _corrupt_commit(log_uri, options) if log_uri else None
        named = f"commit file {commit}" if commit else f"a commit file in {location}/_delta_log"
        return CorruptTableError(
            f"the Delta log of table {table!r} is corrupt: {named} is not valid JSON "
            f"({_first_clause(text)}); restore it from a backup: the table cannot be read "
            "until then"
        )
    return LakeError(f"{action} table {table!r} failed (table {location}, lake {root}): {text}")


def _classify(exc: BaseException, text: str) -> ErrorKind:
    """Which known cause ``exc`` has (``"other"`` for transient or unknown ones)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "full"
    for kind, pattern in _KINDS:
        if pattern.search(text):
            return kind
    return "other"


def _refusal(text: str) -> str:
    """The S3 error code of a refusal (e.g. ``InvalidAccessKeyId``), else ``HTTP 403``."""
    code = _S3_CODE.search(text)
    return f"HTTP 403 {code.group(1)}" if code else "HTTP 403 Forbidden"


def _first_clause(text: str) -> str:
    """The reason part of a cleaned error, without the exception type, in a few words."""
    reason = text.split(": ", 1)[-1]
    return reason if len(reason) <= 120 else reason[:117] + "..."


def _corrupt_commit(log_uri: str, options: dict[str, str]) -> str | None:
    """The first commit file under ``log_uri`` that is not valid NDJSON, if one can be found."""
    try:
        for name, read in _commit_files(log_uri, options):
            try:
                for line in read().decode("utf-8").splitlines():
                    if line.strip():
                        json.loads(line)
            except (UnicodeDecodeError, ValueError):
                return name
    except Exception:
        return None  # only a diagnosis: the caller still reports the table
    return None


def _commit_files(log: str, options: dict[str, str]) -> list[tuple[str, Callable[[], bytes]]]:
    """(location, reader) of the newest JSON commits under ``log``, oldest first."""
    if not log.startswith("s3://"):
        names = sorted(n for n in os.listdir(log) if _COMMIT.fullmatch(n))
        paths = [os.path.join(log, n) for n in names[-_SCANNED_COMMITS:]]
        return [(path, partial(_read_local, path)) for path in paths]
    bucket, prefix = split_s3_uri(log)
    client = s3_client(options, read_timeout=30.0)
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            if _COMMIT.fullmatch(entry["Key"].rsplit("/", 1)[-1]):
                keys.append(entry["Key"])

    def reader(key: str) -> Callable[[], bytes]:
        return lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read()

    return [(f"s3://{bucket}/{k}", reader(k)) for k in sorted(keys)[-_SCANNED_COMMITS:]]


def _read_local(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()
