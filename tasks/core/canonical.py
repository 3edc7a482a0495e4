"""Map a bronze table of any source onto the canonical fields of its role.

Types are decided from the bronze schema, not per row: a timestamp stored as text is parsed, one
stored as a datetime is converted to UTC. Unparseable values become null and the role's contract
quarantines them.
"""

from __future__ import annotations

import polars as pl

from tasks.core.config import ROLE_FIELDS, SourceBase
from tasks.core.normalise import (
    clean_text,
    normalise_email,
    parse_bool,
    parse_decimal,
    parse_timestamp,
)

TIMESTAMP_FIELDS = {"updated_at", "created_at", "occurred_at", "opted_in_at"}
BOOL_FIELDS = {"opted_in", "opted_out"}
DECIMAL_FIELDS = {"amount"}
EMAIL_FIELDS = {"email"}
# Fields we keep verbatim (ids must not be trimmed into collisions).
ID_FIELDS = {"source_id", "order_id", "event_id", "anonymous_id"}


def canonical_columns(role: str) -> list[str]:
    required, optional = ROLE_FIELDS[role]
    return [*required, *optional]


def to_canonical(lf: pl.LazyFrame, source: SourceBase, *, source_name: str) -> pl.LazyFrame:
    """Select and type the role's canonical columns; keep ``_source`` and the raw email.

    Missing optional columns are null; a missing *required* column raises ``KeyError`` naming
    the canonical field and the source column expected.
    """
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
            exprs.append(pl.lit(None, dtype=_dtype_of(field)).alias(field))
            if field in EMAIL_FIELDS:
                exprs.append(pl.lit(None, pl.String).alias("email_raw"))
            continue
        exprs.append(_typed(pl.col(column), field, schema[column]).alias(field))
        if field in EMAIL_FIELDS:
            exprs.append(pl.col(column).cast(pl.String).alias("email_raw"))
    if "_ingested_at" in schema:
        exprs.append(pl.col("_ingested_at"))
    return lf.select(exprs)


def _typed(expr: pl.Expr, field: str, dtype: pl.DataType) -> pl.Expr:
    if field in TIMESTAMP_FIELDS:
        return parse_timestamp(expr, dtype)
    if field in BOOL_FIELDS:
        return parse_bool(expr, dtype)
    if field in DECIMAL_FIELDS:
        return parse_decimal(expr, dtype)
    if field in EMAIL_FIELDS:
        return normalise_email(expr)
    if field in ID_FIELDS:
        return expr.cast(pl.String)
    return clean_text(expr)


def _dtype_of(field: str) -> pl.DataType:
    if field in TIMESTAMP_FIELDS:
        return pl.Datetime("us", "UTC")
    if field in BOOL_FIELDS:
        return pl.Boolean()
    if field in DECIMAL_FIELDS:
        return pl.Float64()
    return pl.String()
