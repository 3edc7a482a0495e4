"""Map a bronze table of any source onto the canonical fields of its role.

Types are decided from the bronze schema, not per row: a timestamp stored as text is parsed, one
stored as a datetime is converted to UTC. Each canonical field has one normaliser (a registry,
:data:`FIELD_NORMALISERS`); unparseable values become null and the role's contract decides what
that means (a required field quarantines the row; an optional attribute such as a phone number
is reported by :func:`normalisation_losses`, and the row is kept).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import polars as pl

from tasks.core.config_base import ROLE_FIELDS, SourceBase
from tasks.core.masking import is_pii_name, mask_emails_expr, mask_value
from tasks.core.normalise import (
    UTC_MICROS,
    clean_text,
    normalise_country,
    normalise_currency,
    normalise_email,
    normalise_label,
    normalise_name,
    normalise_phone,
    parse_bool,
    parse_decimal,
    parse_timestamp,
)


@dataclass(frozen=True)
class NormaliseOptions:
    """Settings the normalisers need (from ``pipeline.yaml`` → ``transform``)."""

    default_phone_region: str = "DE"


Normaliser = Callable[[pl.Expr, pl.DataType, NormaliseOptions], pl.Expr]


def _timestamp(expr: pl.Expr, dtype: pl.DataType, _: NormaliseOptions) -> pl.Expr:
    return parse_timestamp(expr, dtype)


def _bool(expr: pl.Expr, dtype: pl.DataType, _: NormaliseOptions) -> pl.Expr:
    return parse_bool(expr, dtype)


def _decimal(expr: pl.Expr, dtype: pl.DataType, _: NormaliseOptions) -> pl.Expr:
    return parse_decimal(expr, dtype)


def _email(expr: pl.Expr, _dtype: pl.DataType, _: NormaliseOptions) -> pl.Expr:
    return normalise_email(expr)


def _phone(expr: pl.Expr, _dtype: pl.DataType, options: NormaliseOptions) -> pl.Expr:
    return normalise_phone(expr, default_region=options.default_phone_region)


def _country(expr: pl.Expr, _dtype: pl.DataType, _: NormaliseOptions) -> pl.Expr:
    return normalise_country(expr)


def _name(expr: pl.Expr, _dtype: pl.DataType, _: NormaliseOptions) -> pl.Expr:
    return normalise_name(expr)


def _currency(expr: pl.Expr, _dtype: pl.DataType, _: NormaliseOptions) -> pl.Expr:
    return normalise_currency(expr)


def _label(expr: pl.Expr, _dtype: pl.DataType, _: NormaliseOptions) -> pl.Expr:
    return normalise_label(expr)


def _verbatim(expr: pl.Expr, _dtype: pl.DataType, _: NormaliseOptions) -> pl.Expr:
    # Ids are kept as the source wrote them: trimming could merge two distinct ids.
    return expr.cast(pl.String)


def _text(expr: pl.Expr, _dtype: pl.DataType, _: NormaliseOptions) -> pl.Expr:
    return clean_text(expr)


def _url(expr: pl.Expr, _dtype: pl.DataType, _: NormaliseOptions) -> pl.Expr:
    # A URL may quote an address (``?email=...``): past bronze it is kept masked.
    return mask_emails_expr(clean_text(expr))


FIELD_NORMALISERS: dict[str, Normaliser] = {
    "updated_at": _timestamp,
    "created_at": _timestamp,
    "occurred_at": _timestamp,
    "opted_in_at": _timestamp,
    "double_opt_in_at": _timestamp,
    "opted_in": _bool,
    "opted_out": _bool,
    "amount": _decimal,
    "email": _email,
    "phone": _phone,
    "country": _country,
    "first_name": _name,
    "last_name": _name,
    "currency": _currency,
    "category": _label,
    "status": _label,
    "event_type": _label,
    "lawful_basis": _label,
    "source_id": _verbatim,
    "order_id": _verbatim,
    "event_id": _verbatim,
    "anonymous_id": _verbatim,
    "consent_form_id": _verbatim,
    "consent_wording_version": _verbatim,
    "url": _url,
}
"""Canonical field -> normaliser; any other field is cleaned text."""

FIELD_DTYPES: dict[str, pl.DataType] = {
    "updated_at": UTC_MICROS,
    "created_at": UTC_MICROS,
    "occurred_at": UTC_MICROS,
    "opted_in_at": UTC_MICROS,
    "double_opt_in_at": UTC_MICROS,
    "opted_in": pl.Boolean(),
    "opted_out": pl.Boolean(),
    "amount": pl.Float64(),
}
"""Canonical field -> dtype when not a string."""

# Fields whose source value is kept beside the normalised one (as ``<field>_raw``): emails so a
# quarantined row shows what the source sent, phones and countries so values the normaliser
# could not read are counted (see normalisation_losses) instead of vanishing.
RAW_KEPT = ("email", "phone", "country")


def canonical_columns(role: str) -> list[str]:
    required, optional = ROLE_FIELDS[role]
    return [*required, *optional]


def canonical_schema(role: str) -> dict[str, pl.DataType]:
    """The columns and types :func:`to_canonical` produces for ``role`` (for an empty frame)."""
    schema: dict[str, pl.DataType] = {"_source": pl.String()}
    for field in canonical_columns(role):
        schema[field] = FIELD_DTYPES.get(field, pl.String())
        if field in RAW_KEPT:
            schema[f"{field}_raw"] = pl.String()
    schema["_ingested_at"] = UTC_MICROS
    return schema


def to_canonical(
    lf: pl.LazyFrame,
    source: SourceBase,
    *,
    source_name: str,
    options: NormaliseOptions | None = None,
) -> pl.LazyFrame:
    """Select, type and normalise the role's canonical columns; keep ``_source`` and raw values.

    Missing optional columns are null; a missing *required* column raises ``KeyError`` naming
    the canonical field and the source column expected.
    """
    options = options or NormaliseOptions()
    schema = lf.collect_schema()
    required, _optional = ROLE_FIELDS[source.role]
    exprs: list[pl.Expr] = [pl.lit(source_name).alias("_source")]
    for field in canonical_columns(source.role):
        column = source.column(field)
        if column not in schema:
            if field in required:
                raise KeyError(
                    f"source {source_name!r}: column {column!r} for required field {field!r} "
                    f"is not in bronze (columns: {sorted(schema.names())})"
                )
            exprs.append(pl.lit(None, dtype=FIELD_DTYPES.get(field, pl.String())).alias(field))
            if field in RAW_KEPT:
                exprs.append(pl.lit(None, pl.String).alias(f"{field}_raw"))
            continue
        normaliser = FIELD_NORMALISERS.get(field, _text)
        exprs.append(normaliser(pl.col(column), schema[column], options).alias(field))
        if field in RAW_KEPT:
            exprs.append(pl.col(column).cast(pl.String).alias(f"{field}_raw"))
    if "_ingested_at" in schema:
        exprs.append(pl.col("_ingested_at"))
    return lf.select(exprs)


LOSSES_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),
    "field": pl.String(),
    "values": pl.Int64(),
    "example": pl.String(),
}


def _example(field: str, expr: pl.Expr) -> pl.Expr:
    """An example value as reports show it: masked if ``field`` is an identifier (a phone)."""
    if not is_pii_name(field):
        return expr
    return expr.map_elements(mask_value, return_dtype=pl.String)


def normalisation_losses(canonical: pl.LazyFrame, *, masked: bool = True) -> pl.LazyFrame:
    """Per source and field: how many non-blank source values normalised to null, and one example.

    Only optional attributes are counted here (``phone``, ``country``); a required field that
    fails (an email) quarantines its row instead. The rows themselves are kept.

    The example is the smallest such value, masked if it is an identifier. ``masked=False``
    keeps it raw: the losses of parts of one input (chunks of a restage) are then added up by
    :func:`combine_losses`, which picks the smallest example before masking, so the parts give
    what the whole would have.
    """
    schema = canonical.collect_schema()
    frames = [
        canonical.filter(
            pl.col(f"{field}_raw").str.strip_chars().str.len_chars().fill_null(0).gt(0)
            & pl.col(field).is_null()
        )
        .group_by("_source")
        .agg(
            pl.len().cast(pl.Int64).alias("values"),
            pl.col(f"{field}_raw").sort().first().alias("example"),
        )
        .select(
            pl.col("_source").alias("source"),
            pl.lit(field).alias("field"),
            "values",
            (_example(field, pl.col("example")) if masked else pl.col("example")).alias("example"),
        )
        for field in ("phone", "country")
        if field in schema and f"{field}_raw" in schema
    ]
    if not frames:
        return pl.LazyFrame(schema=LOSSES_SCHEMA)
    return pl.concat(frames).sort("source", "field")


def combine_losses(parts: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """The :func:`normalisation_losses` of a whole input from those of its parts (each computed
    with ``masked=False``): counts added, the smallest example kept, then masked."""
    if not parts:
        return pl.DataFrame(schema=LOSSES_SCHEMA)
    summed = (
        pl.concat(parts, how="vertical")
        .group_by("source", "field")
        .agg(pl.col("values").sum().cast(pl.Int64), pl.col("example").min())
    )
    identifiers = [f for f in summed.get_column("field").unique().to_list() if is_pii_name(f)]
    masked = pl.col("example").map_elements(mask_value, return_dtype=pl.String)
    return (
        summed.with_columns(
            pl.when(pl.col("field").is_in(identifiers))
            .then(masked)
            .otherwise(pl.col("example"))
            .alias("example")
        )
        .select(list(LOSSES_SCHEMA))
        .sort("source", "field")
    )
