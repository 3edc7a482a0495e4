"""Data contracts (pandera models) and the split of a frame into valid rows and quarantine.

"What valid data is" lives in the models: one per source role as it enters silver (the
``*Candidate`` models) and one per silver and gold table. :func:`split_valid` is "how it is
checked": it validates a *collected* DataFrame (lazy validation checks only the schema, not
values), keeps every row that passed, and turns every failing row into a quarantine record naming
the table, source, rule, column and value. Nothing is dropped silently:
``len(valid) + Split.rejected == len(input)``, and a failure that is not tied to rows (a missing
column, a wrong dtype, an unexpected column in a strict model) raises instead.

Rule names are pandera's check names: ``not_nullable``, ``field_uniqueness``,
``greater_than_or_equal_to(0)``, ``isin([...])`` and our named checks (``email_syntax``,
``currency_has_rate``, ...), so the quarantine says which promise a row broke.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Optional

import pandera.polars as pa
import polars as pl
from pandera.errors import SchemaErrors

from tasks.core.feature_catalog import CUSTOMER_FEATURES, Feature
from tasks.core.feature_catalog import RFM_PATTERN as RFM_PATTERN
from tasks.core.masking import mask_record_value
from tasks.core.normalise import CONTACT_KEY_PATTERN as CONTACT_KEY_PATTERN
from tasks.core.normalise import UTC_MICROS, country_lookup, is_valid_email, sha256_hex
from tasks.core.tables import QUARANTINE_SCHEMA as QUARANTINE_SCHEMA
from tasks.errors import DataQualityError

CONSENT_STATUSES = ["subscribed", "unsubscribed", "unknown"]
LINKED_BY = ["email", "anonymous_id"]
E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"

# Every timestamp in silver and gold is UTC with microseconds; naive datetimes are rejected.
UtcDatetime = Annotated[pl.Datetime, "us", "UTC"]
StringList = pl.List(pl.String)


def _email_syntax(data: pa.PolarsData) -> pl.LazyFrame:
    return data.lazyframe.select(is_valid_email(pl.col(data.key)))


def _iso_country(data: pa.PolarsData) -> pl.LazyFrame:
    codes = sorted(set(country_lookup().values()))
    return data.lazyframe.select(pl.col(data.key).is_in(codes))


# --- inputs: one model per source role, checked before rows enter silver ---------------------
class ContactCandidate(pa.DataFrameModel):
    """A contact row from one source, after normalisation, before identity resolution."""

    source_id: str = pa.Field(nullable=False)
    email: str = pa.Field(nullable=False)
    updated_at: UtcDatetime = pa.Field(nullable=False)

    @pa.check("email", name="email_syntax")
    def _email(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _email_syntax(data)

    class Config:
        strict = False


class OrderCandidate(pa.DataFrameModel):
    """An order row. The currency check depends on configured rates: see :func:`order_contract`."""

    order_id: str = pa.Field(nullable=False)
    email: str = pa.Field(nullable=False)
    amount: float = pa.Field(nullable=False, ge=0)
    currency: str = pa.Field(nullable=True)
    updated_at: UtcDatetime = pa.Field(nullable=False)

    @pa.check("email", name="email_syntax")
    def _email(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _email_syntax(data)

    class Config:
        strict = False


def order_contract(currencies: Iterable[str]) -> pa.DataFrameSchema:
    """:class:`OrderCandidate` plus ``currency_has_rate``: the currency is one we can convert.

    A missing currency fails the same rule: an amount whose currency is unknown is never
    assumed to be in the reporting currency.
    """
    known = sorted(set(currencies))

    def has_rate(data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col(data.key).is_in(known).fill_null(False))

    check = pa.Check(
        has_rate,
        name="currency_has_rate",  # pandera reports ``error`` as the rule: keep it stable
        ignore_na=False,
    )
    return OrderCandidate.to_schema().update_column("currency", checks=[check])


class EventCandidate(pa.DataFrameModel):
    event_id: str = pa.Field(nullable=False)
    event_type: str = pa.Field(nullable=False)
    occurred_at: UtcDatetime = pa.Field(nullable=False)
    email: str = pa.Field(nullable=True)

    @pa.check("email", name="email_syntax")
    def _email(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _email_syntax(data)

    class Config:
        strict = False


class EnrichmentCandidate(pa.DataFrameModel):
    email: str = pa.Field(nullable=False)
    updated_at: UtcDatetime = pa.Field(nullable=False)

    @pa.check("email", name="email_syntax")
    def _email(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _email_syntax(data)

    class Config:
        strict = False


# --- silver ---------------------------------------------------------------------------------
class SilverContact(pa.DataFrameModel):
    """``silver/contacts``: one row per person (normalised email), with current consent."""

    contact_key: str = pa.Field(nullable=False, unique=True, str_matches=CONTACT_KEY_PATTERN)
    email: str = pa.Field(nullable=False, unique=True)
    first_name: str = pa.Field(nullable=True)
    last_name: str = pa.Field(nullable=True)
    phone: str = pa.Field(nullable=True, str_matches=E164_PATTERN)
    country: str = pa.Field(nullable=True)
    company: str = pa.Field(nullable=True)
    job_title: str = pa.Field(nullable=True)
    city: str = pa.Field(nullable=True)
    consent_status: str = pa.Field(nullable=False, isin=CONSENT_STATUSES)
    consent_at: UtcDatetime = pa.Field(nullable=True)
    consent_source: str = pa.Field(nullable=True)
    # The ops/consent_events row that decided (absent when consent was not read from it).
    consent_event_id: Optional[str] = pa.Field(nullable=True)  # noqa: UP045 (pandera: optional column)
    source_ids: StringList = pa.Field(nullable=False)  # type: ignore[valid-type]
    record_count: int = pa.Field(nullable=False, ge=1)
    updated_at: UtcDatetime = pa.Field(nullable=False)

    @pa.check("email", name="email_syntax")
    def _email(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _email_syntax(data)

    @pa.check("country", name="iso_country")
    def _country(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _iso_country(data)

    @pa.check("source_ids", name="explained_by_source_ids")
    def _explained(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col(data.key).list.len() > 0)

    @pa.dataframe_check(name="consent_has_source_and_time")
    def _consent_stated(cls, data: pa.PolarsData) -> pl.LazyFrame:
        unknown = pl.col("consent_status") == "unknown"
        stated = pl.col("consent_at").is_not_null() & pl.col("consent_source").is_not_null()
        return data.lazyframe.select(unknown | stated)

    class Config:
        strict = True


class SilverOrder(pa.DataFrameModel):
    """``silver/orders``: the latest version of each order, linked by ``contact_key``."""

    order_id: str = pa.Field(nullable=False, unique=True)
    contact_key: str = pa.Field(nullable=False, str_matches=CONTACT_KEY_PATTERN)
    amount: float = pa.Field(nullable=False, ge=0)
    currency: str = pa.Field(nullable=False)
    fx_rate: float = pa.Field(nullable=False, gt=0)
    amount_reporting: float = pa.Field(nullable=False, ge=0)
    category: str = pa.Field(nullable=True)
    status: str = pa.Field(nullable=True)
    created_at: UtcDatetime = pa.Field(nullable=False)
    updated_at: UtcDatetime = pa.Field(nullable=False)
    source: str = pa.Field(nullable=False, alias="_source")

    class Config:
        strict = True


class SilverEvent(pa.DataFrameModel):
    """``silver/events``: one row per event id; ``contact_key`` when the person is known."""

    event_id: str = pa.Field(nullable=False, unique=True)
    contact_key: str = pa.Field(nullable=True, str_matches=CONTACT_KEY_PATTERN)
    anonymous_id: str = pa.Field(nullable=True)
    event_type: str = pa.Field(nullable=False)
    occurred_at: UtcDatetime = pa.Field(nullable=False)
    url: str = pa.Field(nullable=True)
    linked_by: str = pa.Field(nullable=True, isin=LINKED_BY)
    source: str = pa.Field(nullable=False, alias="_source")

    @pa.dataframe_check(name="linked_iff_contact_key")
    def _linked(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(
            pl.col("contact_key").is_null() == pl.col("linked_by").is_null()
        )

    class Config:
        strict = True


# --- gold -----------------------------------------------------------------------------------
def _windows_nest(cls: type, data: pa.PolarsData) -> pl.LazyFrame:
    return data.lazyframe.select(
        (pl.col("events_30d") <= pl.col("events_90d"))
        & (pl.col("frequency") <= pl.col("order_count"))
    )


def _scored_iff_ordered(cls: type, data: pa.PolarsData) -> pl.LazyFrame:
    return data.lazyframe.select(pl.col("r_score").is_null() == (pl.col("frequency") == 0))


def _annotation(dtype: pl.DataType) -> object:
    """The pandera annotation of a feature's polars type (what the model classes spell)."""
    if dtype == UTC_MICROS:
        return UtcDatetime
    return {pl.String(): str, pl.Int64(): int, pl.Float64(): float}.get(dtype, type(dtype))


def _feature_field(feature: Feature) -> object:
    return pa.Field(
        nullable=feature.nullable,
        unique=feature.unique,
        ge=feature.ge,
        le=feature.le,
        str_matches=feature.pattern,
    )


def _features_contract() -> type[pa.DataFrameModel]:
    """The contract of ``gold/customer_features``, derived from the feature catalogue: a column
    per feature with its nullability and bounds, plus the rules that relate features."""
    namespace: dict[str, object] = {
        "__doc__": "``gold/customer_features``: one row per contact (see "
        "tasks.core.feature_catalog).",
        "__module__": __name__,
        "__annotations__": {f.name: _annotation(f.dtype) for f in CUSTOMER_FEATURES},
        **{f.name: _feature_field(f) for f in CUSTOMER_FEATURES},
        "_windows_nest": pa.dataframe_check(name="windows_nest")(_windows_nest),
        "_scored": pa.dataframe_check(name="scored_iff_ordered_in_window")(_scored_iff_ordered),
        "Config": type("Config", (), {"strict": True}),
    }
    return type("CustomerFeatures", (pa.DataFrameModel,), namespace)


CustomerFeatures = _features_contract()


class AudienceMember(pa.DataFrameModel):
    """``gold/audience_members``: who a segment's destinations receive; opted-in people only."""

    segment: str = pa.Field(nullable=False)
    contact_key: str = pa.Field(nullable=False, str_matches=CONTACT_KEY_PATTERN)
    email: str = pa.Field(nullable=False)
    first_name: str = pa.Field(nullable=True)
    last_name: str = pa.Field(nullable=True)
    phone: str = pa.Field(nullable=True, str_matches=E164_PATTERN)
    country: str = pa.Field(nullable=True)
    consent_status: str = pa.Field(nullable=False, isin=["subscribed"])
    consent_at: UtcDatetime = pa.Field(nullable=False)
    consent_event_id: Optional[str] = pa.Field(nullable=True)  # noqa: UP045 (the deciding opt-in)

    @pa.check("email", name="email_syntax")
    def _email(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _email_syntax(data)

    class Config:
        strict = True
        unique = ["segment", "contact_key"]


# --- quarantine -----------------------------------------------------------------------------

Contract = type[pa.DataFrameModel] | pa.DataFrameSchema


@dataclass(frozen=True)
class Split:
    """The result of checking a frame against a contract.

    ``rejected`` counts the distinct input rows that failed (one row may fail several rules and
    then has several quarantine records); ``valid.height + rejected`` equals the input height.
    """

    valid: pl.DataFrame
    quarantine: pl.DataFrame
    rejected: int = 0


def _contract_name(contract: Contract) -> str:
    if isinstance(contract, pa.DataFrameSchema):
        return str(contract.name or "schema")
    return contract.__name__


def split_valid(
    df: pl.DataFrame,
    contract: Contract,
    *,
    table: str,
    run_id: str,
    now: datetime,
    source_column: str = "_source",
) -> Split:
    """Validate ``df`` against ``contract``; route failing rows to quarantine records.

    A failure that is not tied to rows (a missing column, a wrong dtype) means the whole frame
    is unusable: that raises :class:`DataQualityError` naming the table, column and check.
    """
    try:
        contract.validate(df, lazy=True)
        return Split(valid=df, quarantine=pl.DataFrame(schema=QUARANTINE_SCHEMA))
    except SchemaErrors as exc:
        failures = exc.failure_cases
    frame_level = failures.filter(pl.col("index").is_null())
    if frame_level.height:
        first = frame_level.row(0, named=True)
        raise DataQualityError(
            f"{table}: contract {_contract_name(contract)} failed: {first['check']}: "
            f"{first['failure_case']!r} (in {first['column']!r})"
        )
    # A row-level dataframe check reports the whole row as its "failure case" and the model as
    # its "column": the row is already in the record, so name no column and no value.
    row_check = pl.col("schema_context") == "DataFrameSchema"
    per_row = (
        failures.select(
            pl.col("index").cast(pl.UInt32).alias("_row_nr"),
            pl.col("check").alias("rule"),
            pl.when(row_check).then(None).otherwise(pl.col("column")).alias("column"),
            pl.when(row_check)
            .then(None)
            .otherwise(pl.col("failure_case").cast(pl.String))
            .alias("value"),
        )
        .unique()
        .sort("_row_nr", "rule", "column", nulls_last=True)
    )
    failed = per_row.select("_row_nr").unique()
    indexed = df.with_row_index("_row_nr")
    bad_rows = indexed.join(failed, on="_row_nr", how="semi")
    valid = indexed.join(failed, on="_row_nr", how="anti").drop("_row_nr")
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
    return Split(valid=valid, quarantine=quarantine, rejected=failed.height)


RULE_COUNTS_SCHEMA: dict[str, pl.DataType] = {
    "table": pl.String(),
    "source": pl.String(),
    "rule": pl.String(),
    "column": pl.String(),
    "rows": pl.Int64(),
    "example": pl.String(),
}


def rule_counts(quarantine: pl.LazyFrame) -> pl.LazyFrame:
    """Quarantined rows per table, source, rule and column, most frequent first, with an example."""
    return (
        quarantine.group_by("table", "source", "rule", "column")
        .agg(
            pl.col("row").n_unique().cast(pl.Int64).alias("rows"),
            pl.col("value").drop_nulls().sort().first().alias("example"),
        )
        .select(list(RULE_COUNTS_SCHEMA))
        .sort(["rows", "table", "source", "rule", "column"], descending=[True] + [False] * 4)
    )


def validate_or_raise(df: pl.DataFrame, model: Contract, *, table: str) -> None:
    """Check a table's contract and stop loudly on any failure (for tables with no quarantine)."""
    try:
        model.validate(df, lazy=True)
    except SchemaErrors as exc:
        top = [_masked_failure(case) for case in exc.failure_cases.head(5).to_dicts()]
        raise DataQualityError(f"{table}: output violates {_contract_name(model)}: {top}") from None


def _masked_failure(case: dict[str, Any]) -> dict[str, Any]:
    """A pandera failure case for an error message: an identifier's value masked."""
    value = case.get("failure_case")
    if value is not None:
        case["failure_case"] = mask_record_value(str(value), case.get("column"), ())
    return case
