"""S3 store access shared by the lake, the landing zone, the webhook receiver and the doctor.

A lake root is either a local directory or ``s3://bucket/prefix`` on any S3-compatible store.
This module holds what every S3 caller needs to talk to that store the way deltalake does: the
URI helpers, the object_store option names (read with the same aliases object_store accepts),
duration parsing, and :func:`s3_client`, a boto3 client for the same endpoint, keys and region.

Encryption at rest and the CA bundle are storage options like the endpoint and the keys, so one
mapping configures every writer: deltalake/object_store read ``aws_server_side_encryption`` and
``aws_sse_kms_key_id`` themselves, and every object written through boto3 (landed files, their
archive copies, doctor probes) gets the same headers from :func:`sse_put_arguments`.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import boto3
import botocore
import certifi
from botocore.config import Config

from tasks.core.encryption import StoreEncryption, store_encryption
from tasks.core.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.literals import ServerSideEncryptionType

__all__ = [
    "CA_BUNDLE_OPTION",
    "DOCTOR_CONNECT_TIMEOUT_S",
    "DOCTOR_MAX_ATTEMPTS",
    "DOCTOR_READ_TIMEOUT_S",
    "SseArguments",
    "StoreEncryption",
    "ca_bundle_of",
    "check_ca_bundle",
    "encryption_of",
    "is_s3_uri",
    "normalise_option_key",
    "parse_duration_seconds",
    "put_arguments",
    "s3_client",
    "s3_option",
    "split_s3_uri",
    "sse_put_arguments",
    "store_encryption",
    "store_security_options",
    "trust_ca_bundle",
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
    "server_side_encryption": "server_side_encryption",
    "sse_kms_key_id": "sse_kms_key_id",
    "server_side_encryption_aws_kms_key_id": "sse_kms_key_id",
    "ca_bundle": "ca_bundle",
}

# object_store has no option for the CAs it trusts: deltalake and polars read the trust store
# from SSL_CERT_FILE when they build a client (checked with deltalake 1.6.6 and polars 2.1). The
# bundle travels in the storage options under this key (ignored by both) so that boto3 clients
# built from the same options verify against exactly it, and trust_ca_bundle adds it to the
# process trust store for deltalake and polars.
CA_BUNDLE_OPTION = "aws_ca_bundle"
_TRUST_STORE_VARIABLE = "SSL_CERT_FILE"


# Doctor checks must answer quickly even when the endpoint is a black hole.
DOCTOR_CONNECT_TIMEOUT_S = 3.0
DOCTOR_READ_TIMEOUT_S = 10.0
DOCTOR_MAX_ATTEMPTS = 2

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|secs|m|min|mins)?\s*$")


class SseArguments(TypedDict, total=False):
    """The boto3 ``put_object`` / ``copy_object`` arguments for server-side encryption."""

    ServerSideEncryption: ServerSideEncryptionType
    SSEKMSKeyId: str


def put_arguments(encryption: StoreEncryption | None) -> SseArguments:
    """``encryption`` as boto3 ``put_object`` / ``copy_object`` arguments (none for None)."""
    if encryption is None:
        return {}
    arguments: SseArguments = {"ServerSideEncryption": encryption.algorithm}
    if encryption.kms_key_id:
        arguments["SSEKMSKeyId"] = encryption.kms_key_id
    return arguments


def encryption_of(storage_options: Mapping[str, str]) -> StoreEncryption | None:
    """The server-side encryption that ``storage_options`` ask for (validated as above)."""
    mode = s3_option(storage_options, "server_side_encryption")
    key = s3_option(storage_options, "sse_kms_key_id")
    return store_encryption(mode, key)


def sse_put_arguments(storage_options: Mapping[str, str]) -> SseArguments:
    """boto3 arguments that give an object the encryption deltalake gives the tables."""
    return put_arguments(encryption_of(storage_options))


def ca_bundle_of(storage_options: Mapping[str, str]) -> str | None:
    """The PEM file of CAs the store's TLS certificate is verified against, if one is set."""
    value = s3_option(storage_options, "ca_bundle")
    return value.strip() or None if value is not None else None


def check_ca_bundle(path: str) -> None:
    """Raise :class:`ValueError` naming ``path`` if it holds no loadable CA certificates."""
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load CA certificates from {path!r}: {exc}") from exc


def trust_ca_bundle(storage_options: Mapping[str, str]) -> None:
    """Make deltalake and polars trust the CA bundle of ``storage_options`` (if any).

    They read their trust store from ``SSL_CERT_FILE`` whenever they open a connection, and so do
    httpx and Python's ``ssl`` defaults: a file holding only a private CA would break every other
    HTTPS connection of the process (vendor APIs, Prefect). So ``SSL_CERT_FILE`` is pointed at a
    combined file: the trust store in force (``SSL_CERT_FILE`` if set, else certifi's bundle, the
    default of httpx) plus the bundle. Idempotent: a store that already holds the bundle is kept.

    Raises:
        ValueError: for an unreadable bundle or an unreadable ``SSL_CERT_FILE``.
    """
    bundle = ca_bundle_of(storage_options)
    if bundle is None:
        return
    check_ca_bundle(bundle)
    current = os.environ.get(_TRUST_STORE_VARIABLE) or None
    os.environ[_TRUST_STORE_VARIABLE] = _with_bundle(current, bundle)


def _with_bundle(current: str | None, bundle: str) -> str:
    base = current or certifi.where()
    try:
        base_pem = Path(base).read_bytes()
    except OSError as exc:
        raise ValueError(f"{_TRUST_STORE_VARIABLE}={base!r} cannot be read: {exc}") from exc
    added = Path(bundle).read_bytes().strip()
    if added in base_pem:
        return base
    combined = base_pem.rstrip() + b"\n" + added + b"\n"
    digest = hashlib.sha256(combined).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"audience-lake-trust-{digest}.pem"
    if not target.exists():
        # Write then rename: another process may be reading the same name.
        partial = target.with_name(f"{target.name}.{uuid.uuid4().hex}.tmp")
        partial.write_bytes(combined)
        os.replace(partial, target)
    return str(target)


def store_security_options(settings: Settings) -> dict[str, str]:
    """The storage options for the encryption and CA bundle configured in ``settings``."""
    encryption = settings.store_encryption
    options = {} if encryption is None else encryption.storage_options()
    if settings.s3_ca_bundle:
        options[CA_BUNDLE_OPTION] = settings.s3_ca_bundle
    return options


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


def s3_option(storage_options: Mapping[str, str], name: str) -> str | None:
    """The value of the option ``name`` (canonical, see :func:`normalise_option_key`) under any
    of its spellings, or None if ``storage_options`` do not set it."""
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
    connect_timeout: float = DOCTOR_CONNECT_TIMEOUT_S,
    read_timeout: float = DOCTOR_READ_TIMEOUT_S,
    max_attempts: int = DOCTOR_MAX_ATTEMPTS,
    signed: bool = True,
) -> S3Client:
    """A boto3 S3 client for the endpoint, keys and region in object_store-style options.

    Keys missing from ``storage_options`` fall back to boto3's usual chain (environment, profile),
    which matches what object_store does. ``signed=False`` builds an anonymous client, used to ask
    "does anything answer?" without involving credentials. TLS is verified against the options'
    CA bundle when one is set (see :data:`CA_BUNDLE_OPTION`), else boto3's default trust store.
    """
    endpoint = s3_option(storage_options, "endpoint")
    region = s3_option(storage_options, "region")
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
        aws_access_key_id=s3_option(storage_options, "access_key_id") if signed else None,
        aws_secret_access_key=s3_option(storage_options, "secret_access_key") if signed else None,
        aws_session_token=s3_option(storage_options, "session_token") if signed else None,
        verify=ca_bundle_of(storage_options),
        config=config,
    )
    return client
