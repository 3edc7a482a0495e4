"""Environment settings: where the lake is and the credentials to reach things.

Everything here comes from the environment (``AUDIENCE_LAKE_*`` plus the standard ``AWS_*``),
never from ``pipeline.yaml``. Secrets are ``SecretStr`` so they never appear in logs or reprs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.core.config import SecretRef
from tasks.core.encryption import StoreEncryption, store_encryption
from tasks.core.secret_sources import lookup_secret
from tasks.errors import ConfigError

# Used only when no pepper is configured, so the embedded demo runs with zero configuration.
# `audience-lake doctor` warns when a non-local lake runs with it.
DEMO_PEPPER = "audience-lake-demo-pepper-not-secret"

LAKE_URI_FORMS = "a local directory, file:///absolute/path or s3://bucket/prefix"
_URI_SCHEME = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):(?P<rest>.*)", re.DOTALL)
# A URI that lost its colon ("s3//bucket") still reads as a local path: refuse these names.
_SCHEME_WITHOUT_COLON = re.compile(r"(?P<scheme>s3a?|file|gs|gcs|az|abfss?|https?|hdfs)//", re.I)
_SUPPORTED_SCHEMES = ("s3", "s3a", "file")
# Characters any S3-compatible store allows in a bucket name (AWS is stricter; some stores relax
# case and underscores): enough to catch an endpoint or a path pasted in the bucket's place.
_BUCKET = re.compile(r"[A-Za-z0-9._-]+")


def lake_uri_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be a lake root, or None if it can.

    A typo must not silently become a local folder: ``s3:/bucket`` and ``s3//bucket`` are
    refused, as are an S3 URI without a valid bucket and any scheme other than s3/s3a/file.

    Example:
        >>> lake_uri_problem("s3:/bucket/lake")
        "'s3:/bucket/lake' is missing a '/' after 's3:' (write s3://bucket/lake)"
        >>> lake_uri_problem("s3://bucket/lake") is None
        True
    """
    if not uri.strip():
        return f"is empty; expected {LAKE_URI_FORMS}"
    if uri != uri.strip():
        return f"{uri!r} has leading or trailing whitespace"
    typo = _SCHEME_WITHOUT_COLON.match(uri)
    if typo:
        scheme = typo["scheme"]
        fixed = f"{scheme}://{uri[typo.end() :]}"
        return f"{uri!r} looks like a URI without its ':' (write {fixed})"
    match = _URI_SCHEME.fullmatch(uri)
    if match is None:
        return None  # a local path (a one-letter "scheme" is a Windows drive: not matched)
    scheme, rest = match["scheme"], match["rest"]
    if scheme not in _SUPPORTED_SCHEMES:
        if scheme.lower() in _SUPPORTED_SCHEMES:
            return f"{uri!r}: write the scheme in lowercase ({scheme.lower()}://)"
        return f"{uri!r}: unsupported scheme {scheme!r}; expected {LAKE_URI_FORMS}"
    if not rest.startswith("//"):
        fixed = f"{scheme}://{rest.lstrip('/')}"
        return f"{uri!r} is missing a '/' after '{scheme}:' (write {fixed})"
    body = rest[2:]
    if scheme == "file":
        return None if body.startswith("/") else f"{uri!r}: write file:///absolute/path"
    bucket = body.partition("/")[0]
    if not bucket:
        return f"{uri!r} names no bucket; expected s3://bucket/prefix"
    if not _BUCKET.fullmatch(bucket):
        return (
            f"{uri!r}: {bucket!r} is not a valid S3 bucket name (letters, digits, dots, hyphens; "
            "the endpoint goes in AUDIENCE_LAKE_S3_ENDPOINT)"
        )
    return None


class Settings(BaseSettings):
    """Process settings, read from the environment."""

    model_config = SettingsConfigDict(env_prefix="AUDIENCE_LAKE_", extra="ignore", frozen=True)

    lake_uri: str = Field(
        default=".lake",
        description="Local directory or s3://bucket/prefix holding the Delta tables.",
    )
    config: str = Field(default="pipeline.yaml", description="Path of pipeline.yaml.")
    s3_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AUDIENCE_LAKE_S3_ENDPOINT", "AWS_ENDPOINT_URL"),
        description="S3 API endpoint for MinIO or another S3-compatible store.",
    )
    aws_access_key_id: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AWS_ACCESS_KEY_ID")
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY")
    )
    aws_region: str = Field(
        default="us-east-1", validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION")
    )
    s3_allow_http: bool | None = Field(
        default=None, description="Allow plain-HTTP endpoints (default: true for http:// URLs)."
    )
    s3_sse: str | None = Field(
        default=None,
        description="Server-side encryption of every object written to the store: none, "
        "sse-s3 (AES256) or sse-kms (aws:kms, with s3_sse_kms_key_id).",
    )
    s3_sse_kms_key_id: str | None = Field(
        default=None, description="KMS key (id, alias/name or ARN) for sse-kms."
    )
    s3_ca_bundle: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AUDIENCE_LAKE_S3_CA_BUNDLE", "AWS_CA_BUNDLE"),
        description="PEM file of the CAs the store's TLS certificate is verified against "
        "(instead of the default trust store).",
    )
    s3_max_retries: int | None = Field(
        default=None,
        ge=0,
        description="Retries of a failed store request before it fails (default: 3).",
    )
    s3_retry_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a store request is retried for before it fails (default: 10).",
    )
    pepper: SecretStr = Field(
        default=SecretStr(DEMO_PEPPER),
        description="Secret for contact_key = HMAC-SHA256(pepper, email).",
    )
    pepper_version: int = Field(default=1, ge=1)

    @field_validator("lake_uri")
    @classmethod
    def _valid_lake_uri(cls, value: str) -> str:
        problem = lake_uri_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _valid_encryption(self) -> Settings:
        self.store_encryption  # noqa: B018 - raises ValueError for an invalid combination
        return self

    @property
    def store_encryption(self) -> StoreEncryption | None:
        """The server-side encryption every object written to the store gets (None: none)."""
        return store_encryption(self.s3_sse, self.s3_sse_kms_key_id)

    @property
    def lake_is_local(self) -> bool:
        return not self.lake_uri.startswith(("s3://", "s3a://"))

    @property
    def uses_demo_pepper(self) -> bool:
        return self.pepper.get_secret_value() == DEMO_PEPPER


def resolve_secret(ref: SecretRef, env: Mapping[str, str] | None = None) -> SecretStr:
    """The value of a secret named in ``pipeline.yaml``; a clear error if it is missing.

    ``AUDIENCE_LAKE_SECRET_<NAME>`` first, then the registered secret sources (a Prefect Secret
    block ``audience-lake-<name>`` when ``tasks.secret_blocks`` is loaded and an API is set).
    """
    env = os.environ if env is None else env
    value = env.get(ref.env_var) or lookup_secret(ref.secret)
    if not value:
        raise ConfigError(f"secret {ref.secret!r} is not set: export {ref.env_var}")
    return SecretStr(value)


def load_settings() -> Settings:
    """Settings from the environment, with a :class:`ConfigError` naming the bad variable."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            # A check across variables (e.g. sse-kms and its key id) has no single location.
            (f"AUDIENCE_LAKE_{'.'.join(str(p) for p in e['loc']).upper()}: " if e["loc"] else "")
            + str(e["msg"]).removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise ConfigError(f"environment: {problems}") from exc
