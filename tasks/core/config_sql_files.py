"""Config models of the SQL source and the file-drop source (``kind: sql`` / ``kind: files``).

Re-exported from :mod:`tasks.core.config`, which puts them in the ``Source`` union; they build
on the base models of :mod:`tasks.core.config_base`. Like every config model they are frozen and
reject unknown keys; secrets are :class:`SecretRef` names, never values: a database password
written into ``url`` is refused at load.
"""

from __future__ import annotations

import re
import zoneinfo
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from tasks.core.config_base import Model, SecretRef, SourceBase

__all__ = [
    "SQL_URL_SCHEMES",
    "FileDropS3",
    "FileDropSource",
    "SqlSource",
    "sql_dialect",
]

# Accepted URL schemes -> the database family the SQL reader knows how to talk to. The reader
# (tasks.connectors.sources.sql) maps each family to a driver; here we only reject the unknown.
SQL_URL_SCHEMES: dict[str, str] = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "postgresql+psycopg": "postgresql",
    "mysql": "mysql",
    "mysql+pymysql": "mysql",
    "mariadb": "mysql",
    "mariadb+pymysql": "mysql",
    "sqlite": "sqlite",
}

_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$", re.DOTALL)
# A SQL identifier as written in a catalog: quoted by the reader, so any case is fine.
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_$]*$", max_length=128)]


def sql_dialect(url: str) -> str:
    """The database family (``postgresql``, ``mysql`` or ``sqlite``) of a database URL.

    Raises:
        ValueError: for a URL without a scheme or with an unsupported one (the message shows the
            scheme only, never the rest of the URL).
    """
    match = _URL.match(url.strip())
    if match is None:
        raise ValueError("expected a database URL such as postgresql://user@host:5432/db")
    scheme = match.group("scheme").lower()
    if scheme not in SQL_URL_SCHEMES:
        raise ValueError(
            f"unsupported database URL scheme {scheme!r}; supported: {sorted(SQL_URL_SCHEMES)}"
        )
    return SQL_URL_SCHEMES[scheme]


def url_has_password(url: str) -> bool:
    """Whether ``scheme://user:password@host/...`` carries a password."""
    match = _URL.match(url.strip())
    if match is None:
        return False
    authority = match.group("rest").split("/", 1)[0]
    userinfo, at, _host = authority.rpartition("@")
    return bool(at) and ":" in userinfo


class SqlSource(SourceBase):
    """A table in a transaction database, pulled in chunks by keyset on ``(cursor, primary key)``.

    Supports PostgreSQL, MySQL/MariaDB and SQLite. Rows that share a cursor value at a chunk
    boundary are never skipped; the watermark is the largest cursor committed in bronze.
    """

    kind: Literal["sql"]
    url: str = Field(
        description=(
            "Database URL without a password: postgresql://user@host:5432/db, "
            "mysql://user@host:3306/db (MariaDB too) or sqlite:///path/orders.db"
        )
    )
    password: SecretRef | None = Field(
        default=None, description="Database password, supplied by the environment."
    )
    db_schema: Identifier | None = Field(
        default=None, description="Schema (PostgreSQL) or database (MySQL) holding the table."
    )
    table: Identifier
    primary_key: Identifier
    cursor_field: Identifier = Field(default="updated_at", description="Incremental cursor.")
    columns: list[Identifier] | None = Field(
        default=None,
        description="Columns to extract (the key and cursor are always added); default: all.",
    )
    chunk_size: int = Field(default=10_000, ge=1, le=1_000_000)
    overlap_seconds: float = Field(
        default=0,
        ge=0,
        description=(
            "Re-read window before the watermark for timestamp cursors, for rows committed late "
            "with an older timestamp; the merge absorbs the re-read rows."
        ),
    )
    decimals: Literal["float64", "decimal"] = Field(
        default="float64",
        description=(
            "How NUMERIC/DECIMAL columns land in bronze: Float64, or Decimal(p, s) "
            "(unconstrained NUMERIC then lands as exact text)."
        ),
    )
    naive_timezone: str = Field(
        default="UTC",
        description="Time zone of timestamps stored without one (converted to UTC in bronze).",
    )
    connect_timeout_seconds: float = Field(default=10, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _url_is_supported_without_password(cls, url: str) -> str:
        sql_dialect(url)
        if url_has_password(url):
            # Never echo the URL: it holds the password.
            raise ValueError(
                "contains a password; remove it and set password: {secret: NAME} "
                "(read from AUDIENCE_LAKE_SECRET_<NAME>)"
            )
        return url

    @field_validator("naive_timezone")
    @classmethod
    def _known_timezone(cls, name: str) -> str:
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {name!r}") from exc
        return name

    @property
    def dialect(self) -> str:
        """``postgresql``, ``mysql`` or ``sqlite``."""
        return sql_dialect(self.url)


class FileDropS3(Model):
    """Where an ``s3://`` drop lives, when it is not the lake's own S3 store."""

    endpoint: str | None = Field(default=None, description="e.g. http://127.0.0.1:9000")
    region: str = "us-east-1"
    access_key_id: SecretRef | None = None
    secret_access_key: SecretRef | None = None
    allow_http: bool | None = Field(
        default=None, description="Allow plain HTTP (default: only for http:// endpoints)."
    )

    @model_validator(mode="after")
    def _keys_come_in_pairs(self) -> FileDropS3:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both access_key_id and secret_access_key, or neither")
        return self


class FileDropSource(SourceBase):
    """Files landed by a third party under a folder or S3 prefix; each is ingested once.

    Every object version (key + ETag/size on S3, key + content hash locally) is committed with
    its rows, so a rerun skips it. A file that cannot be read, or lacks a required column, is
    quarantined whole and recorded, so it is neither retried forever nor blocks the others.
    """

    kind: Literal["files"]
    path: str = Field(description="Local folder, or s3://bucket/prefix, holding the drops.")
    format: Literal["csv", "ndjson", "parquet"] = Field(
        description="File format; gzip-compressed files are detected and decompressed."
    )
    pattern: str = Field(
        default="*",
        description="Glob matched against each key relative to the folder/prefix ('*' spans '/').",
    )
    primary_key: str | None = Field(default=None, description="Row id used to dedupe deliveries.")
    required_columns: list[str] = Field(
        default_factory=list,
        description="Columns every file must have (besides primary_key); else it is quarantined.",
    )
    csv_separator: str = Field(default=",", min_length=1, max_length=1)
    s3: FileDropS3 | None = Field(
        default=None, description="S3 endpoint and keys; default: the lake's S3 settings."
    )
    max_files_per_run: int = Field(default=10_000, ge=1, description="Safety bound per run.")

    @model_validator(mode="after")
    def _s3_options_need_s3_path(self) -> FileDropSource:
        if self.s3 is not None and not self.path.startswith("s3://"):
            raise ValueError("s3: only applies to an s3://bucket/prefix path")
        if self.path.startswith("s3://") and not self.path[len("s3://") :].split("/", 1)[0]:
            raise ValueError("path: s3:// URI has no bucket")
        return self
