"""Data contracts (pandera models) and the split of a frame into valid rows and quarantine.

"What valid data is" lives in the models; :func:`split_valid` is "how it is checked": it
validates a *collected* DataFrame (lazy validation checks only the schema, not values), keeps
every row that passed, and turns every failing row into a quarantine record naming the table,
source, rule, column and value. Nothing is dropped silently: ``len(valid) + rows quarantined ==
len(input)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import pandera.polars as pa
import polars as pl
from pandera.errors import SchemaErrors

from tasks.core.normalise import EMAIL_PATTERN, UTC_MICROS, sha256_hex
from tasks.errors import DataQualityError

CONSENT_STATUSES = ["subscribed", "unsubscribed", "unknown"]

# Every timestamp in silver and gold is UTC with microseconds; naive datetimes are rejected.
UtcDatetime = Annotated[pl.Datetime, "us", "UTC"]


class ContactCandidate(pa.DataFrameModel):
    """A contact row from one source, after normalisation, before identity resolution."""

    source_id: str = pa.Field(nullable=False)
    email: str = pa.Field(nullable=False, str_matches=EMAIL_PATTERN)
    updated_at: UtcDatetime = pa.Field(nullable=False)

    class Config:
        strict = False


class OrderCandidate(pa.DataFrameModel):
    order_id: str = pa.Field(nullable=False)
    email: str = pa.Field(nullable=False, str_matches=EMAIL_PATTERN)
    amount: float = pa.Field(nullable=False, ge=0)
    updated_at: UtcDatetime = pa.Field(nullable=False)

    class Config:
        strict = False


class EventCandidate(pa.DataFrameModel):
    event_id: str = pa.Field(nullable=False)
    event_type: str = pa.Field(nullable=False)
    occurred_at: UtcDatetime = pa.Field(nullable=False)
    email: str = pa.Field(nullable=True, str_matches=EMAIL_PATTERN)

    class Config:
        strict = False


class EnrichmentCandidate(pa.DataFrameModel):
    email: str = pa.Field(nullable=False, str_matches=EMAIL_PATTERN)
    updated_at: UtcDatetime = pa.Field(nullable=False)

    class Config:
        strict = False


class SilverContact(pa.DataFrameModel):
    """``silver/contacts``: one row per person."""

    contact_key: str = pa.Field(nullable=False, unique=True)
    email: str = pa.Field(nullable=False, unique=True, str_matches=EMAIL_PATTERN)
    consent_status: str = pa.Field(nullable=False, isin=CONSENT_STATUSES)
    source_ids: pl.List(pl.String) = pa.Field(nullable=False)  # type: ignore[valid-type]
    updated_at: UtcDatetime = pa.Field(nullable=False)

    class Config:
        strict = False


class SilverOrder(pa.DataFrameModel):
    order_id: str = pa.Field(nullable=False, unique=True)
    contact_key: str = pa.Field(nullable=False)
    amount: float = pa.Field(nullable=False, ge=0)

    class Config:
        strict = False


class SilverEvent(pa.DataFrameModel):
    event_id: str = pa.Field(nullable=False, unique=True)
    occurred_at: UtcDatetime = pa.Field(nullable=False)

    class Config:
        strict = False


class CustomerFeatures(pa.DataFrameModel):
    contact_key: str = pa.Field(nullable=False, unique=True)
    order_count: int = pa.Field(nullable=False, ge=0)
    revenue: float = pa.Field(nullable=False, ge=0)

    class Config:
        strict = False


class AudienceMember(pa.DataFrameModel):
    segment: str = pa.Field(nullable=False)
    contact_key: str = pa.Field(nullable=False)
    email: str = pa.Field(nullable=False, str_matches=EMAIL_PATTERN)
    consent_status: str = pa.Field(nullable=False, isin=["subscribed"])

    class Config:
        strict = False
        unique = ["segment", "contact_key"]


QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "quarantine_id": pl.String(),
    "table": pl.String(),
    "source": pl.String(),
    "rule": pl.String(),
    "column": pl.String(),
    "value": pl.String(),
    "row": pl.String(),
    "run_id": pl.String(),
    "quarantined_at": UTC_MICROS,
}


@dataclass(frozen=True)
class Split:
    """The result of checking a frame against a contract."""

    valid: pl.DataFrame
    quarantine: pl.DataFrame


def split_valid(
    df: pl.DataFrame,
    model: type[pa.DataFrameModel],
    *,
    table: str,
    run_id: str,
    now: datetime,
    source_column: str = "_source",
) -> Split:
    """Validate ``df`` against ``model``; route failing rows to quarantine records.

    A failure that is not tied to rows (a missing column, a wrong dtype) means the whole frame
    is unusable: that raises :class:`DataQualityError` naming the table, column and check.
    """
    indexed = df.with_row_index("_row_nr")
    try:
        model.validate(df, lazy=True)
        return Split(valid=df, quarantine=pl.DataFrame(schema=QUARANTINE_SCHEMA))
    except SchemaErrors as exc:
        failures = exc.failure_cases
    frame_level = failures.filter(pl.col("index").is_null())
    if frame_level.height:
        first = frame_level.row(0, named=True)
        raise DataQualityError(
            f"{table}: contract {model.__name__} failed: {first['check']}: "
            f"{first['failure_case']!r} (in {first['column']!r})"
        )
    # One record per failing row and rule; a row failing two rules is quarantined under both.
    per_row = (
        failures.select(
            pl.col("index").cast(pl.UInt32).alias("_row_nr"),
            pl.col("check").alias("rule"),
            pl.col("column"),
            pl.col("failure_case").cast(pl.String).alias("value"),
        )
        .unique()
        .sort("_row_nr", "rule", "column")
    )
    bad_rows = indexed.join(per_row.select("_row_nr").unique(), on="_row_nr", how="semi")
    valid = indexed.join(per_row.select("_row_nr").unique(), on="_row_nr", how="anti").drop(
        "_row_nr"
    )
    source = pl.col(source_column) if source_column in df.columns else pl.lit(None, pl.String)
    rows = bad_rows.select(
        "_row_nr",
        source.cast(pl.String).alias("source"),
        pl.struct(pl.exclude("_row_nr")).struct.json_encode().alias("row"),
    )
    quarantine = (
        per_row.join(rows, on="_row_nr", how="left")
        .with_columns(
            pl.lit(table).alias("table"),
            pl.lit(run_id).alias("run_id"),
            pl.lit(now).cast(UTC_MICROS).alias("quarantined_at"),
        )
        .with_columns(
            # Same table + rule + column + row content -> same id, so re-runs merge, not append.
            sha256_hex(
                pl.concat_str(
                    ["table", "rule", "column", "row"], separator="\x1f", ignore_nulls=True
                )
            ).alias("quarantine_id")
        )
        .select(list(QUARANTINE_SCHEMA))
        .unique("quarantine_id", keep="first", maintain_order=True)
    )
    return Split(valid=valid, quarantine=quarantine)


def validate_or_raise(df: pl.DataFrame, model: type[pa.DataFrameModel], *, table: str) -> None:
    """Check an output table's contract; a failure here is a bug upstream, so stop loudly."""
    try:
        model.validate(df, lazy=True)
    except SchemaErrors as exc:
        top = exc.failure_cases.head(5).to_dicts()
        raise DataQualityError(f"{table}: output violates {model.__name__}: {top}") from exc
