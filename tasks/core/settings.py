"""Environment settings: where the lake is and the credentials to reach things.

Everything here comes from the environment (``AUDIENCE_LAKE_*`` plus the standard ``AWS_*``),
never from ``pipeline.yaml``. Secrets are ``SecretStr`` so they never appear in logs or reprs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.core.config import SecretRef
from tasks.errors import ConfigError

# Used only when no pepper is configured, so the embedded demo runs with zero configuration.
# `audience-lake doctor` warns when a non-local lake runs with it.
DEMO_PEPPER = "audience-lake-demo-pepper-not-secret"


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
    pepper: SecretStr = Field(
        default=SecretStr(DEMO_PEPPER),
        description="Secret for contact_key = HMAC-SHA256(pepper, email).",
    )
    pepper_version: int = Field(default=1, ge=1)

    @field_validator("lake_uri")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if "://" in value and not value.startswith(("s3://", "s3a://", "file://")):
            raise ValueError(f"lake_uri {value!r}: only local paths and s3:// are supported")
        return value

    @property
    def lake_is_local(self) -> bool:
        return not self.lake_uri.startswith(("s3://", "s3a://"))

    @property
    def uses_demo_pepper(self) -> bool:
        return self.pepper.get_secret_value() == DEMO_PEPPER


def resolve_secret(ref: SecretRef, env: Mapping[str, str] | None = None) -> SecretStr:
    """The value of a secret named in ``pipeline.yaml``; a clear error if it is missing."""
    env = os.environ if env is None else env
    value = env.get(ref.env_var)
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
            f"AUDIENCE_LAKE_{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"environment: {problems}") from exc
