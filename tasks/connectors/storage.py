"""Storage checks behind ``audience-lake doctor``: is the lake root safe for Delta writes?

A lake root is either a local directory or ``s3://bucket/prefix`` on any S3-compatible store.
The checks answer the questions that decide whether Delta writes there are safe:

* local: the directory exists (or can be created), is writable, and supports atomic
  create-if-absent (``O_EXCL``), which Delta's local commits rely on;
* S3: the endpoint answers (over TLS verified against the configured CA bundle or the default
  trust store, or plain HTTP, which is reported), the credentials are accepted for the bucket, the
  store honours conditional PUT (``If-None-Match: *`` answered with 412 for an existing key), and
  the probe object was stored with the server-side encryption the configuration asks for (read
  back with HEAD). deltalake 1.6 commits every ``_delta_log`` entry with a conditional PUT, so a
  store that ignores the header silently loses commits when two writers race
  (docs/architecture.md, *Safety rules*).

The S3 helpers these checks share with the lake (URIs, option names, the boto3 client, the
encryption arguments) live in :mod:`tasks.connectors.s3`.

Each check yields one :class:`CheckResult`. When a check fails, the checks after it are reported as
failed with a ``skipped: ...`` detail rather than left out, so the report always has the same rows.
Details never contain secrets.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from tasks.connectors.s3 import (
    DOCTOR_CONNECT_TIMEOUT_S,
    DOCTOR_MAX_ATTEMPTS,
    DOCTOR_READ_TIMEOUT_S,
    SseArguments,
    ca_bundle_of,
    check_ca_bundle,
    encryption_of,
    is_s3_uri,
    parse_duration_seconds,
    put_arguments,
    s3_client,
    s3_option,
    split_s3_uri,
)
from tasks.core.encryption import StoreEncryption
from tasks.core.settings import lake_uri_problem

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["CheckResult", "check_store"]


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one storage check: ``name`` (e.g. ``"conditional put"``), pass/fail, detail.

    ``warn`` marks a passed check that still deserves attention (plain HTTP, objects stored
    unencrypted).
    """

    name: str
    ok: bool
    detail: str
    warn: bool = False


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
    names = ["reachable", "tls", "credentials", "conditional put", "encryption"]
    try:
        bucket, prefix = split_s3_uri(root)
        encryption = encryption_of(storage_options)
        bundle = ca_bundle_of(storage_options)
        if bundle is not None:
            check_ca_bundle(bundle)
    except ValueError as exc:
        return _with_skipped([CheckResult("reachable", False, str(exc))], names, "reachable")

    connect_timeout = _timeout_option(storage_options, "connect_timeout", DOCTOR_CONNECT_TIMEOUT_S)
    read_timeout = _timeout_option(storage_options, "timeout", DOCTOR_READ_TIMEOUT_S)
    endpoint = s3_option(storage_options, "endpoint") or "the default AWS S3 endpoint"

    def client(*, signed: bool) -> S3Client:
        return s3_client(
            storage_options,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=DOCTOR_MAX_ATTEMPTS,
            signed=signed,
        )

    results = [_check_reachable(client(signed=False), bucket, endpoint)]
    if not results[-1].ok:
        return _with_skipped(results, names, "reachable")
    results.append(_describe_tls(s3_option(storage_options, "endpoint"), bundle))

    signed_client = client(signed=True)
    results.append(_check_credentials(signed_client, bucket, prefix))
    if not results[-1].ok:
        return _with_skipped(results, names, "credentials")

    sse = put_arguments(encryption)
    results.append(_check_conditional_put(signed_client, bucket, prefix, sse))
    results.append(_check_encryption(signed_client, bucket, prefix, encryption))
    return results


def _timeout_option(storage_options: Mapping[str, str], name: str, default: float) -> float:
    raw = s3_option(storage_options, name)
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


def _probe_key(prefix: str) -> str:
    return "/".join(
        part for part in (prefix, "_audience_lake_doctor", f"{uuid.uuid4().hex}.probe") if part
    )


def _describe_tls(endpoint: str | None, bundle: str | None) -> CheckResult:
    # Reached only after an HTTPS request succeeded: boto3 verified the certificate, since
    # nothing here ever turns verification off.
    if endpoint is not None and endpoint.lower().startswith("http://"):
        return CheckResult(
            "tls",
            True,
            f"plain HTTP to {endpoint}: data and signed requests are not encrypted in transit "
            "(fine on loopback or a private network; use https:// elsewhere)",
            warn=True,
        )
    trusted = f"the CA bundle {bundle}" if bundle else "the default trust store"
    return CheckResult("tls", True, f"HTTPS, certificate verified against {trusted}")


def _check_encryption(
    client: S3Client, bucket: str, prefix: str, wanted: StoreEncryption | None
) -> CheckResult:
    """Upload a probe with the configured SSE headers and report what the store says it did."""
    key = _probe_key(prefix)
    arguments = put_arguments(wanted)
    try:
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"probe", **arguments)
            head = client.head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            asked = wanted.describe() if wanted else "no server-side encryption"
            return CheckResult(
                "encryption",
                False,
                f"a PUT with {asked} of s3://{bucket}/{key} failed ({_describe(exc)}); "
                "the store may not support that encryption (MinIO needs a KMS configured)",
            )
    finally:
        with contextlib.suppress(ClientError, BotoCoreError):
            client.delete_object(Bucket=bucket, Key=key)
    got_algorithm = head.get("ServerSideEncryption")
    got_key = head.get("SSEKMSKeyId")
    got = _describe_stored(got_algorithm, got_key)
    if wanted is None:
        if got_algorithm:
            return CheckResult("encryption", True, f"a probe object was stored with {got}")
        return CheckResult(
            "encryption",
            True,
            "a probe object was stored unencrypted (no server-side encryption configured and "
            "none reported by the bucket); set AUDIENCE_LAKE_S3_SSE",
            warn=True,
        )
    if got_algorithm != wanted.algorithm or not _same_kms_key(wanted.kms_key_id, got_key):
        return CheckResult(
            "encryption",
            False,
            f"configured {wanted.describe()} but the store reports the probe object as {got}",
        )
    return CheckResult("encryption", True, f"a probe object was stored with {got}")


def _describe_stored(algorithm: str | None, kms_key_id: str | None) -> str:
    if not algorithm:
        return "no server-side encryption"
    if algorithm.startswith("aws:kms"):
        return f"SSE-KMS ({algorithm}, key {kms_key_id or 'the store default'})"
    return f"SSE-S3 ({algorithm})" if algorithm == "AES256" else algorithm


def _same_kms_key(wanted: str | None, got: str | None) -> bool:
    # AWS answers with the key's ARN even when the request named a bare key id.
    if wanted is None:
        return True
    return got is not None and (got == wanted or got.endswith(f"/{wanted}"))


def _check_conditional_put(
    client: S3Client, bucket: str, prefix: str, sse: SseArguments
) -> CheckResult:
    key = _probe_key(prefix)
    location = f"s3://{bucket}/{key}"
    try:
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"probe", IfNoneMatch="*", **sse)
        except (ClientError, BotoCoreError) as exc:
            return CheckResult(
                "conditional put",
                False,
                f"a PUT with If-None-Match: * of {location} was rejected ({_describe(exc)}); "
                "deltalake commits every log entry this way, so writes would fail",
            )
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"probe", IfNoneMatch="*", **sse)
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
        if isinstance(link, ssl.SSLCertVerificationError):
            return (
                f"TLS certificate verification failed ({link.verify_message}); if the store "
                "uses a private CA, set AUDIENCE_LAKE_S3_CA_BUNDLE to its PEM file"
            )
        if isinstance(link, socket.gaierror):
            return f"DNS lookup failed ({link.strerror or link})"
        if isinstance(link, ConnectionRefusedError):
            return "connection refused (is the S3 server running on that host and port?)"
        if isinstance(link, TimeoutError):
            return "connection timed out"
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            "TLS certificate verification failed; if the store uses a private CA, set "
            "AUDIENCE_LAKE_S3_CA_BUNDLE to its PEM file"
        )
    if "timeout" in text.lower() or "timed out" in text.lower():
        return f"timed out: {text}"
    return f"not reachable: {text}"


def _with_skipped(results: list[CheckResult], names: list[str], failed: str) -> list[CheckResult]:
    done = {result.name for result in results}
    for name in names:
        if name not in done:
            results.append(CheckResult(name, False, f"skipped: {failed!r} failed"))
    return results
