"""Polars expressions that turn messy source values into canonical ones.

Each function takes and returns a ``pl.Expr`` so callers compose them inside ``with_columns``;
none of them raises on bad input: unparseable values become null and the contract (pandera)
decides what that means.
"""

from __future__ import annotations

import hashlib
import hmac

import polars as pl

# Deliberately simple: one @, no spaces, a dot in the domain. Stricter checks (IDNA, MX) belong
# to the richer normaliser of a later stage; this one must never reject a deliverable address.
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"

_TIMESTAMP_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.fZ",
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%dT%H:%M:%S%.f%:z",
    "%Y-%m-%dT%H:%M:%S%:z",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
)

UTC_MICROS = pl.Datetime("us", "UTC")


def normalise_email(expr: pl.Expr) -> pl.Expr:
    """Trim, Unicode-NFC and lowercase an email; empty strings become null.

    >>> pl.select(normalise_email(pl.lit("  Jane.Doe@Example.COM "))).item()
    'jane.doe@example.com'
    """
    cleaned = expr.cast(pl.String).str.strip_chars().str.normalize("NFC").str.to_lowercase()
    return pl.when(cleaned.str.len_chars() > 0).then(cleaned).otherwise(None)


def is_valid_email(expr: pl.Expr) -> pl.Expr:
    """True where a normalised email has a plausible syntax (null stays null)."""
    return expr.str.contains(EMAIL_PATTERN)


def clean_text(expr: pl.Expr) -> pl.Expr:
    """Trim whitespace; empty strings become null."""
    cleaned = expr.cast(pl.String).str.strip_chars()
    return pl.when(cleaned.str.len_chars() > 0).then(cleaned).otherwise(None)


def parse_timestamp(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A UTC microsecond timestamp from a string (ISO-8601 variants) or a datetime column.

    ``dtype`` is the input column's type, so the caller decides from the schema, not per row.
    Unparseable strings become null.
    """
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            return expr.dt.replace_time_zone("UTC").cast(UTC_MICROS)
        return expr.dt.convert_time_zone("UTC").cast(UTC_MICROS)
    if isinstance(dtype, pl.Date):
        return expr.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    text = expr.cast(pl.String).str.strip_chars()
    attempts = []
    for fmt in _TIMESTAMP_FORMATS:
        parsed = text.str.strptime(pl.Datetime("us"), fmt, strict=False, exact=True)
        if "%z" in fmt or "%:z" in fmt:
            attempts.append(parsed.dt.convert_time_zone("UTC"))
        else:
            attempts.append(parsed.dt.replace_time_zone("UTC"))
    date_only = text.str.strptime(pl.Date, "%Y-%m-%d", strict=False, exact=True)
    attempts.append(date_only.cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))
    return pl.coalesce(attempts)


def parse_bool(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A boolean from true/false, yes/no, 1/0 (any case); anything else is null."""
    if dtype == pl.Boolean:
        return expr
    text = expr.cast(pl.String).str.strip_chars().str.to_lowercase()
    return (
        pl.when(text.is_in(["true", "yes", "y", "1", "t"]))
        .then(True)
        .when(text.is_in(["false", "no", "n", "0", "f"]))
        .then(False)
        .otherwise(None)
    )


def parse_decimal(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A float from a number or numeric string; anything else is null."""
    if dtype.is_numeric():
        return expr.cast(pl.Float64)
    return expr.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)


def contact_key(email: pl.Expr, *, pepper: bytes, version: int) -> pl.Expr:
    """Pseudonymous id: ``v<version>:`` + HMAC-SHA256(pepper, normalised email), hex.

    The version prefix lets a rotated pepper coexist with old keys during a migration.
    """
    prefix = f"v{version}:"

    def digest(values: pl.Series) -> pl.Series:
        return pl.Series(
            values.name,
            [
                None
                if v is None
                else prefix + hmac.new(pepper, v.encode("utf-8"), hashlib.sha256).hexdigest()
                for v in values.to_list()
            ],
            dtype=pl.String,
        )

    return email.map_batches(digest, return_dtype=pl.String)


def sha256_hex(expr: pl.Expr) -> pl.Expr:
    """Stable SHA-256 of a string column (polars' own hash is not stable across versions)."""

    def digest(values: pl.Series) -> pl.Series:
        return pl.Series(
            values.name,
            [
                None if v is None else hashlib.sha256(v.encode("utf-8")).hexdigest()
                for v in values.to_list()
            ],
            dtype=pl.String,
        )

    return expr.map_batches(digest, return_dtype=pl.String)
