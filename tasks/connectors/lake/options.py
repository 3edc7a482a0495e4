"""Storage options for the lake: S3 credentials and endpoints, bounded client timeouts, and the
translation of those options into the spelling polars' reader wants.

deltalake silently accepts option names it does not know, so the options the project relies on
are built here, in one place, and the one option that breaks concurrent commits is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from tasks.connectors.s3 import (
    normalise_option_key,
    parse_duration_seconds,
    store_security_options,
)
from tasks.core.settings import Settings

__all__ = [
    "DEFAULT_S3_CLIENT_OPTIONS",
    "polars_storage_options",
    "reject_unsafe_rename",
    "s3_storage_options",
    "settings_retry_options",
    "settings_storage_options",
    "with_default_client_options",
]

# object_store's defaults (30 s request timeout, 10 retries, 180 s retry budget) turn an
# unreachable endpoint into minutes of silence. These bound it: a refused or black-holed
# connection fails after at most ~retry_timeout + connect_timeout (verified against deltalake
# 1.6.6: the keys are object_store ClientOptions plus delta-rs' retry settings). The request
# timeout stays at object_store's 30 s so large part uploads on slow links still complete.
# Callers override any of them through storage_options.
DEFAULT_S3_CLIENT_OPTIONS: Mapping[str, str] = MappingProxyType(
    {
        "connect_timeout": "3s",
        "timeout": "30s",
        "max_retries": "3",
        "retry_timeout": "10s",
    }
)


def s3_storage_options(
    *,
    endpoint: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    region: str,
    allow_http: bool | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Build deltalake/object_store storage options for an S3-compatible store.

    Args:
        endpoint: e.g. ``http://127.0.0.1:9000`` for MinIO; None for AWS S3.
        access_key_id: None to use the environment/instance credentials chain.
        secret_access_key: required when ``access_key_id`` is given.
        region: the bucket's region (MinIO accepts any, conventionally ``us-east-1``).
        allow_http: allow plain HTTP; None means "only if the endpoint is http://".
        extra: further object_store options (timeouts, ...), applied last.

    Raises:
        ValueError: for a key id without a secret (or vice versa), or any attempt to set
            ``AWS_S3_ALLOW_UNSAFE_RENAME`` (it disables the conditional-put commit protocol).
    """
    if (access_key_id is None) != (secret_access_key is None):
        raise ValueError("set both access_key_id and secret_access_key, or neither")
    options: dict[str, str] = {"AWS_REGION": region}
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
    if access_key_id is not None and secret_access_key is not None:
        options["AWS_ACCESS_KEY_ID"] = access_key_id
        options["AWS_SECRET_ACCESS_KEY"] = secret_access_key
    if allow_http is None:
        allow_http = bool(endpoint) and endpoint is not None and endpoint.startswith("http://")
        if allow_http:
            options["AWS_ALLOW_HTTP"] = "true"
    else:
        options["AWS_ALLOW_HTTP"] = "true" if allow_http else "false"
    if extra:
        reject_unsafe_rename(extra)
        options.update(extra)
    return options


def settings_storage_options(settings: Settings) -> dict[str, str]:
    """S3 options from the environment settings (``AWS_*`` / ``AUDIENCE_LAKE_S3_*``): used by
    the lake and by every source that reads S3 with the lake's credentials."""
    key, secret = settings.aws_access_key_id, settings.aws_secret_access_key
    return s3_storage_options(
        endpoint=settings.s3_endpoint,
        access_key_id=None if key is None else key.get_secret_value(),
        secret_access_key=None if secret is None else secret.get_secret_value(),
        region=settings.aws_region,
        allow_http=settings.s3_allow_http,
        extra={**store_security_options(settings), **settings_retry_options(settings)},
    )


def settings_retry_options(settings: Settings) -> dict[str, str]:
    """The retry bounds set in the environment (``AUDIENCE_LAKE_S3_MAX_RETRIES``,
    ``AUDIENCE_LAKE_S3_RETRY_TIMEOUT`` in seconds); those unset keep
    :data:`DEFAULT_S3_CLIENT_OPTIONS`."""
    options: dict[str, str] = {}
    if settings.s3_max_retries is not None:
        options["max_retries"] = str(settings.s3_max_retries)
    if settings.s3_retry_timeout is not None:
        options["retry_timeout"] = f"{max(1, round(settings.s3_retry_timeout * 1000))}ms"
    return options


def reject_unsafe_rename(options: Mapping[str, str]) -> None:
    """Refuse ``AWS_S3_ALLOW_UNSAFE_RENAME`` in any spelling.

    Raises:
        ValueError: naming the key.
    """
    for key in options:
        if normalise_option_key(key) == "s3_allow_unsafe_rename":
            raise ValueError(
                f"{key} must not be set: it turns off the conditional-put commit protocol and "
                "lets concurrent writers lose commits (docs/architecture.md, Safety rules)"
            )


def with_default_client_options(options: Mapping[str, str]) -> dict[str, str]:
    """``options`` plus every bounded default from :data:`DEFAULT_S3_CLIENT_OPTIONS` they lack."""
    given = {normalise_option_key(key) for key in options}
    merged = {k: v for k, v in DEFAULT_S3_CLIENT_OPTIONS.items() if k not in given}
    merged.update(options)
    return merged


def polars_storage_options(options: Mapping[str, str]) -> dict[str, Any] | None:
    """The lake's options as polars' reader wants them.

    Reads go through polars' own object store client, which shares object_store's client keys
    (``timeout``, ``connect_timeout``) but wants ``max_retries`` as an int (a string is rejected)
    and spells the retry budget ``retry_timeout_ms``. Keys it does not know are ignored.
    """
    if not options:
        return None
    converted: dict[str, Any] = dict(options)
    for key, value in options.items():
        name = normalise_option_key(key)
        if name == "max_retries" and value.strip().isdigit():
            converted[key] = int(value)
        elif name == "retry_timeout":
            seconds = parse_duration_seconds(value)
            if seconds is not None:
                converted["retry_timeout_ms"] = int(seconds * 1000)
    return converted
