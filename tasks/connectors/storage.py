"""Storage checks behind ``audience-lake doctor``, and the S3 helpers they share with the lake.

A lake root is either a local directory or ``s3://bucket/prefix`` on any S3-compatible store.
The checks answer the questions that decide whether Delta writes there are safe:

* local: the directory exists (or can be created), is writable, and supports atomic
  create-if-absent (``O_EXCL``), which Delta's local commits rely on;
* S3: the endpoint answers, the credentials are accepted for the bucket, and the store honours
  conditional PUT (``If-None-Match: *`` answered with 412 for an existing key). deltalake 1.6
  commits every ``_delta_log`` entry that way, so a store that ignores the header silently loses
  commits when two writers race (docs/architecture.md, *Safety rules*).

Each check yields one :class:`CheckResult`. When a check fails, the checks after it are reported as
failed with a ``skipped: ...`` detail rather than left out, so the report always has the same rows.
Details never contain secrets.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from tasks.core.settings import lake_uri_problem

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "CheckResult",
    "check_store",
    "is_s3_uri",
    "normalise_option_key",
    "parse_duration_seconds",
    "s3_client",
    "split_s3_uri",
]

_S3_SCHEMES = ("s3://", "s3a://")

# object_store accepts several spellings for the same S3 setting (``AWS_ENDPOINT_URL``,
# ``aws_endpoint``, ``endpoint``...). We read options the way it does so boto3 talks to the same
# endpoint with the same keys as deltalake.
_OPTION_ALIASES: dict[str, str] = {
    "endpoint_url": "endpoint",
    "endpoint": "endpoint",
    "access_key_id": "access_key_id",
    "secret_access_key": "secret_access_key",
    "session_token": "session_token",
    "token": "session_token",
    "region": "region",
    "default_region": "region",
    "allow_http": "allow_http",
    "connect_timeout": "connect_timeout",
    "timeout": "timeout",
    "s3_allow_unsafe_rename": "s3_allow_unsafe_rename",
}

# Doctor checks must answer quickly even when the endpoint is a black hole.
_DOCTOR_CONNECT_TIMEOUT_S = 3.0
_DOCTOR_READ_TIMEOUT_S = 10.0
_DOCTOR_MAX_ATTEMPTS = 2

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|secs|m|min|mins)?\s*$")


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one storage check: ``name`` (e.g. ``"conditional put"``), pass/fail, detail."""

    name: str
    ok: bool
    detail: str


def is_s3_uri(uri: str) -> bool:
    """Whether ``uri`` names an S3 location (``s3://`` or ``s3a://``)."""
    return uri.lower().startswith(_S3_SCHEMES)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/some/prefix/`` into ``("bucket", "some/prefix")``.

    Raises:
        ValueError: if ``uri`` is not an S3 URI or has no bucket.
    """
    if not is_s3_uri(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    rest = uri.split("://", 1)[1]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri!r}")
    return bucket, prefix.strip("/")


def normalise_option_key(key: str) -> str:
    """Canonical name of an object_store S3 option (``AWS_ENDPOINT_URL`` -> ``endpoint``).

    Unknown keys come back lower-cased with any ``aws_`` prefix removed.
    """
    lowered = key.strip().lower()
    bare = lowered.removeprefix("aws_")
    return _OPTION_ALIASES.get(bare, bare)


def _option(storage_options: Mapping[str, str], name: str) -> str | None:
    for key, value in storage_options.items():
        if normalise_option_key(key) == name:
            return value
    return None


def parse_duration_seconds(value: str) -> float | None:
    """Parse the duration strings object_store accepts in practice (``"3s"``, ``"500ms"``).

    Returns None when the value is not in one of those forms, so callers fall back to a default
    instead of guessing.
    """
    match = _DURATION.match(value)
    if match is None:
        return None
    number = float(match.group(1))
    unit = match.group(2) or "s"
    if unit == "ms":
        return number / 1000.0
    if unit.startswith("m"):
        return number * 60.0
    return number


def s3_client(
    storage_options: Mapping[str, str],
    *,
    connect_timeout: float = _DOCTOR_CONNECT_TIMEOUT_S,
    read_timeout: float = _DOCTOR_READ_TIMEOUT_S,
    max_attempts: int = _DOCTOR_MAX_ATTEMPTS,
    signed: bool = True,
) -> S3Client:
    """A boto3 S3 client for the endpoint, keys and region in object_store-style options.

    Keys missing from ``storage_options`` fall back to boto3's usual chain (environment, profile),
    which matches what object_store does. ``signed=False`` builds an anonymous client, used to ask
    "does anything answer?" without involving credentials.
    """
    endpoint = _option(storage_options, "endpoint")
    region = _option(storage_options, "region")
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"max_attempts": max_attempts, "mode": "standard"},
        # object_store uses path-style requests for custom endpoints; so must we, or boto3 would
        # try <bucket>.<host> names that MinIO and moto on 127.0.0.1 cannot resolve.
        s3={"addressing_style": "path" if endpoint else "auto"},
        signature_version=botocore.UNSIGNED if not signed else None,
    )
    client: S3Client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=_option(storage_options, "access_key_id") if signed else None,
        aws_secret_access_key=_option(storage_options, "secret_access_key") if signed else None,
        aws_session_token=_option(storage_options, "session_token") if signed else None,
        config=config,
    )
    return client


def check_store(root: str, storage_options: Mapping[str, str]) -> list[CheckResult]:
    """Run the doctor checks for a lake root and return one result per check, in order.

    Args:
        root: a local directory or ``s3://bucket/prefix``.
        storage_options: object_store-style options, as given to the ``Lake``.
    """
    problem = lake_uri_problem(root)
    if problem:  # before anything else: a mistyped URI must not become a local folder
        return [CheckResult("lake uri", False, problem)]
    if is_s3_uri(root):
        return _check_s3(root, storage_options)
    return _check_local(root.removeprefix("file://"))


# --- local ---------------------------------------------------------------------------------------


def _check_local(path: str) -> list[CheckResult]:
    directory = os.path.abspath(os.path.expanduser(path))
    names = ["directory", "writable", "atomic create"]
    results: list[CheckResult] = []

    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        results.append(CheckResult("directory", False, f"cannot create {directory}: {exc}"))
        return _with_skipped(results, names, "directory")
    if not os.path.isdir(directory):
        results.append(
            CheckResult("directory", False, f"{directory} exists but is not a directory")
        )
        return _with_skipped(results, names, "directory")
    results.append(CheckResult("directory", True, f"{directory} exists"))

    probe = os.path.join(directory, f".audience-lake-doctor-{uuid.uuid4().hex}")
    try:
        with open(probe, "wb") as handle:
            handle.write(b"probe")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        results.append(CheckResult("writable", False, f"cannot write in {directory}: {exc}"))
        return _with_skipped(results, names, "writable")
    finally:
        _remove_quietly(probe)
    results.append(CheckResult("writable", True, f"wrote and removed a probe file in {directory}"))

    results.append(_check_local_exclusive_create(directory))
    return results


def _check_local_exclusive_create(directory: str) -> CheckResult:
    # Delta's local log store commits with create-if-absent; a filesystem that lets a second
    # exclusive create succeed (some network mounts) would let concurrent writers overwrite commits.
    probe = os.path.join(directory, f".audience-lake-doctor-excl-{uuid.uuid4().hex}")
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    try:
        try:
            fd = os.open(probe, flags, 0o600)
        except OSError as exc:
            return CheckResult(
                "atomic create", False, f"O_EXCL create failed in {directory}: {exc}"
            )
        os.close(fd)
        try:
            fd = os.open(probe, flags, 0o600)
        except FileExistsError:
            return CheckResult(
                "atomic create", True, "a second O_EXCL create of the same file was refused"
            )
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return CheckResult("atomic create", True, "second O_EXCL create refused (EEXIST)")
            return CheckResult("atomic create", False, f"unexpected error on second create: {exc}")
        os.close(fd)
        return CheckResult(
            "atomic create",
            False,
            f"a second O_EXCL create in {directory} succeeded: this filesystem does not provide "
            "atomic create-if-absent, so concurrent Delta writers could overwrite each other",
        )
    finally:
        _remove_quietly(probe)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError:
        # A probe we cannot remove is harmless; the check result already says what happened.
        pass


# --- S3 ------------------------------------------------------------------------------------------


def _check_s3(root: str, storage_options: Mapping[str, str]) -> list[CheckResult]:
    names = ["reachable", "credentials", "conditional put"]
    try:
        bucket, prefix = split_s3_uri(root)
    except ValueError as exc:
        return _with_skipped([CheckResult("reachable", False, str(exc))], names, "reachable")

    connect_timeout = _timeout_option(storage_options, "connect_timeout", _DOCTOR_CONNECT_TIMEOUT_S)
    read_timeout = _timeout_option(storage_options, "timeout", _DOCTOR_READ_TIMEOUT_S)
    endpoint = _option(storage_options, "endpoint") or "the default AWS S3 endpoint"

    def client(*, signed: bool) -> S3Client:
        return s3_client(
            storage_options,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=_DOCTOR_MAX_ATTEMPTS,
            signed=signed,
        )

    results = [_check_reachable(client(signed=False), bucket, endpoint)]
    if not results[-1].ok:
        return _with_skipped(results, names, "reachable")

    signed_client = client(signed=True)
    results.append(_check_credentials(signed_client, bucket, prefix))
    if not results[-1].ok:
        return _with_skipped(results, names, "credentials")

    results.append(_check_conditional_put(signed_client, bucket, prefix))
    return results


def _timeout_option(storage_options: Mapping[str, str], name: str, default: float) -> float:
    raw = _option(storage_options, name)
    parsed = parse_duration_seconds(raw) if raw is not None else None
    # The doctor must stay quick even if the lake allows slow requests: never wait longer than
    # our own defaults.
    return min(parsed, default) if parsed is not None and parsed > 0 else default


def _check_reachable(client: S3Client, bucket: str, endpoint: str) -> CheckResult:
    # Anonymous HeadBucket: any HTTP answer (200, 403, 404...) proves something S3-ish is
    # listening, independent of whether our credentials are any good.
    try:
        response = client.head_bucket(Bucket=bucket)
        status = response["ResponseMetadata"]["HTTPStatusCode"]
    except ClientError as exc:
        status = _status(exc)
    except BotoCoreError as exc:
        return CheckResult("reachable", False, f"{endpoint}: {_connection_reason(exc)}")
    return CheckResult("reachable", True, f"{endpoint} answered HTTP {status}")


def _check_credentials(client: S3Client, bucket: str, prefix: str) -> CheckResult:
    # ListObjectsV2 rather than HeadBucket: a HEAD response has no body, so it cannot tell
    # InvalidAccessKeyId from SignatureDoesNotMatch; and deltalake needs list permission anyway.
    try:
        client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1)
    except NoCredentialsError:
        return CheckResult(
            "credentials", False, "no credentials found (set AWS_ACCESS_KEY_ID/SECRET_ACCESS_KEY)"
        )
    except ClientError as exc:
        code = _code(exc)
        if code == "NoSuchBucket" or _status(exc) == 404:
            return CheckResult("credentials", False, f"bucket {bucket!r} does not exist ({code})")
        return CheckResult(
            "credentials",
            False,
            f"bucket {bucket!r} refused the credentials: {code} (HTTP {_status(exc)})",
        )
    except BotoCoreError as exc:
        return CheckResult("credentials", False, f"listing bucket {bucket!r} failed: {exc}")
    return CheckResult("credentials", True, f"credentials accepted; bucket {bucket!r} is listable")


def _check_conditional_put(client: S3Client, bucket: str, prefix: str) -> CheckResult:
    key = "/".join(
        part for part in (prefix, "_audience_lake_doctor", f"{uuid.uuid4().hex}.probe") if part
    )
    location = f"s3://{bucket}/{key}"
    try:
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"probe", IfNoneMatch="*")
        except (ClientError, BotoCoreError) as exc:
            return CheckResult(
                "conditional put",
                False,
                f"a PUT with If-None-Match: * of {location} was rejected ({_describe(exc)}); "
                "deltalake commits every log entry this way, so writes would fail",
            )
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"probe", IfNoneMatch="*")
        except ClientError as exc:
            if _status(exc) == 412:
                return CheckResult(
                    "conditional put",
                    True,
                    "a duplicate PUT with If-None-Match: * was refused with 412 "
                    "(concurrent Delta commits are safe)",
                )
            return CheckResult(
                "conditional put",
                False,
                f"a duplicate PUT with If-None-Match: * was refused with {_describe(exc)}, "
                "expected 412 Precondition Failed",
            )
        except BotoCoreError as exc:
            return CheckResult("conditional put", False, f"duplicate PUT failed: {exc}")
        return CheckResult(
            "conditional put",
            False,
            "the store ACCEPTED a second PUT with If-None-Match: * for an existing key (expected "
            "412): it ignores conditional writes, so concurrent Delta writers would silently lose "
            "commits (see docs/architecture.md, Safety rules). Use a store that honours "
            "If-None-Match; never set AWS_S3_ALLOW_UNSAFE_RENAME.",
        )
    finally:
        # Deleting a probe that was never written fails on some stores; nothing to clean up then.
        with contextlib.suppress(ClientError, BotoCoreError):
            client.delete_object(Bucket=bucket, Key=key)


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "unknown error"))


def _describe(exc: ClientError | BotoCoreError) -> str:
    if isinstance(exc, ClientError):
        return f"{_code(exc)}, HTTP {_status(exc)}"
    return str(exc)


def _connection_reason(exc: BotoCoreError) -> str:
    """Name the network failure: DNS, refused connection, timeout, or the raw error."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    # Bounded walk: exception chains are short, but a cycle must not hang the doctor.
    while current is not None and len(chain) < 16:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for link in chain:
        if isinstance(link, socket.gaierror):
            return f"DNS lookup failed ({link.strerror or link})"
        if isinstance(link, ConnectionRefusedError):
            return "connection refused (is the S3 server running on that host and port?)"
        if isinstance(link, TimeoutError):
            return "connection timed out"
    text = str(exc)
    if "timeout" in text.lower() or "timed out" in text.lower():
        return f"timed out: {text}"
    return f"not reachable: {text}"


def _with_skipped(results: list[CheckResult], names: list[str], failed: str) -> list[CheckResult]:
    done = {result.name for result in results}
    for name in names:
        if name not in done:
            results.append(CheckResult(name, False, f"skipped: {failed!r} failed"))
    return results
