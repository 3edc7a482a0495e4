"""Schema drift at the bronze boundary: which extracted rows bronze can take, and which it cannot.

Bronze keeps rows as extracted, so its schema follows the sources: a column bronze has never seen
simply evolves the table (the lake's merge and append both merge schemas). What bronze cannot take
is a value whose type conflicts with the column bronze already has (``"abc"`` for an ``Int64``,
``1.5`` for an integer), or a row without its primary key. Such a row is quarantined with the
rule it broke; the rest of its page or file is written. Nothing here does IO: the ingest task
hands in the batch and the bronze schema, and writes both halves of the :class:`DriftSplit`.

Rules written to ``ops/quarantine`` (column ``rule``):

* ``missing_primary_key``: the key column is absent, null or blank;
* ``type_conflict(<bronze type>)``: the value cannot become the bronze column's type without loss;
* ``unreadable_file`` / ``schema_violation`` / ``unparseable_record``: a reader's
  :class:`Rejection` (a whole file that cannot be read or lacks a required column; one raw record
  that cannot be parsed).

Example:
    >>> import polars as pl
    >>> from datetime import datetime, timezone
    >>> batch = pl.LazyFrame({"id": ["1", None, "3"], "amount": ["2.5", "4", "lots"]})
    >>> split = split_drift(
    ...     batch, target={"id": pl.String(), "amount": pl.Float64()}, primary_key="id",
    ...     table="bronze/orders", source="orders", run_id="r1",
    ...     now=datetime(2026, 11, 1, tzinfo=timezone.utc),
    ... )
    >>> split.valid.collect()["amount"].to_list()
    [2.5]
    >>> sorted(split.quarantine.collect()["rule"].to_list())
    ['missing_primary_key', 'type_conflict(Float64)']
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from tasks.core.contracts import QUARANTINE_SCHEMA
from tasks.core.normalise import UTC_MICROS, parse_bool, parse_timestamp, sha256_hex

__all__ = [
    "MISSING_PRIMARY_KEY",
    "SCHEMA_VIOLATION",
    "UNPARSEABLE_RECORD",
    "UNREADABLE_FILE",
    "DriftSplit",
    "Rejection",
    "rejection_records",
    "split_drift",
    "type_conflict_rule",
]

MISSING_PRIMARY_KEY = "missing_primary_key"
UNREADABLE_FILE = "unreadable_file"
SCHEMA_VIOLATION = "schema_violation"
UNPARSEABLE_RECORD = "unparseable_record"

_TEXT_TYPES = (pl.String, pl.Categorical, pl.Enum)
_NESTED_TYPES = (pl.Struct, pl.List, pl.Array)
_MAX_VALUE_CHARS = 2000
_RECORD_SCHEMA = {"rule": pl.String, "column": pl.String, "value": pl.String, "row": pl.String}


@dataclass(frozen=True)
class Rejection:
    """Input a reader could not turn into rows: a whole file, or one raw record of it.

    Attributes:
        rule: ``unreadable_file``, ``schema_violation`` or ``unparseable_record``.
        reason: what is wrong, for people (names the file/line; never a credential).
        origin: the file key (or table) the input came from.
        version: the object version (ETag/size or content hash) for a whole-file rejection.
        raw: the raw record text, for a record-level rejection.
        position: the record's line/row number within ``origin`` (1-based).
        column: the column at fault, if one is (e.g. a missing required column).
    """

    rule: str
    reason: str
    origin: str
    version: str | None = None
    raw: str | None = None
    position: int | None = None
    column: str | None = None


@dataclass(frozen=True)
class DriftSplit:
    """A batch split at the bronze boundary.

    ``valid`` holds the rows to write, with every column bronze already has cast to bronze's
    type; ``quarantine`` holds one ``ops/quarantine`` record per failing row and rule.
    """

    valid: pl.LazyFrame
    quarantine: pl.LazyFrame


@dataclass(frozen=True)
class _Check:
    rule: str
    column: str
    failed: pl.Expr
    value: pl.Expr


def type_conflict_rule(dtype: pl.DataType) -> str:
    """The quarantine rule for a value that does not fit a bronze column of type ``dtype``."""
    return f"type_conflict({_type_name(dtype)})"


def split_drift(
    lf: pl.LazyFrame,
    *,
    target: Mapping[str, pl.DataType] | None,
    primary_key: str | None,
    table: str,
    source: str,
    run_id: str,
    now: datetime,
) -> DriftSplit:
    """Split an extracted batch into rows bronze can take and quarantine records for the rest.

    Args:
        lf: the batch as extracted (no ingest metadata yet).
        target: bronze's current schema (None before the table exists). Columns it lacks are new
            and pass through (the write evolves the schema).
        primary_key: the key every row must carry (None: no key check).
        table, source, run_id, now: recorded on each quarantine record.
    """
    schema = lf.collect_schema()
    known = dict(target or {})
    checks: list[_Check] = []
    conversions: list[pl.Expr] = []
    if primary_key is not None:
        checks.append(_key_check(primary_key, schema))
    for name, dtype in schema.items():
        if isinstance(dtype, pl.Null):
            # An all-null column has no type of its own: take bronze's, or text for a new one.
            conversions.append(pl.col(name).cast(known.get(name, pl.String())))
            continue
        wanted = known.get(name)
        if wanted is None or wanted == dtype:
            continue
        converted, failed = _conform(pl.col(name), dtype, wanted)
        conversions.append(converted.alias(name))
        checks.append(
            _Check(type_conflict_rule(wanted), name, failed, _as_text(pl.col(name), dtype))
        )
    if not checks:
        valid = lf.with_columns(conversions)
        records = pl.LazyFrame(schema=_RECORD_SCHEMA)
    else:
        flags = [c.failed.fill_null(False).alias(f"_drift_{i}") for i, c in enumerate(checks)]
        helpers = [f"_drift_{i}" for i in range(len(checks))]
        flagged = lf.with_columns(flags)
        bad_row = pl.any_horizontal(helpers)
        valid = flagged.filter(~bad_row).with_columns(conversions).drop(helpers)
        row_json = (
            pl.struct([_jsonable(name, dtype) for name, dtype in schema.items()])
            .struct.json_encode()
            .alias("_drift_row_json")
            if len(schema)
            else pl.lit("{}").alias("_drift_row_json")
        )
        bad = flagged.filter(bad_row).with_columns(row_json)
        records = pl.concat(
            [
                bad.filter(pl.col(flag)).select(
                    pl.lit(check.rule).alias("rule"),
                    pl.lit(check.column).alias("column"),
                    check.value.alias("value"),
                    pl.col("_drift_row_json").alias("row"),
                )
                for flag, check in zip(helpers, checks, strict=True)
            ],
            how="vertical",
        )
    quarantine = _finish_records(records, table=table, source=source, run_id=run_id, now=now)
    return DriftSplit(valid=valid, quarantine=quarantine)


def rejection_records(
    rejections: Sequence[Rejection], *, table: str, source: str, run_id: str, now: datetime
) -> pl.DataFrame:
    """``ops/quarantine`` records for a reader's rejections (one per rejection).

    ``row`` is a JSON object naming the origin, version, position, reason and (for a record) the
    raw text, so the record can be found and replayed; ``value`` is the reason.
    """
    rows = [
        {
            "rule": r.rule,
            "column": r.column,
            "value": _clip(r.reason),
            "row": json.dumps(
                {
                    "origin": r.origin,
                    "version": r.version,
                    "position": r.position,
                    "reason": r.reason,
                    "raw": r.raw,
                },
                sort_keys=True,
            ),
        }
        for r in rejections
    ]
    frame = pl.LazyFrame(rows, schema=_RECORD_SCHEMA)
    return _finish_records(frame, table=table, source=source, run_id=run_id, now=now).collect()


# --- internals -------------------------------------------------------------------------------


def _finish_records(
    records: pl.LazyFrame, *, table: str, source: str, run_id: str, now: datetime
) -> pl.LazyFrame:
    """Add table/source/run/time and the content id; order columns as ``QUARANTINE_SCHEMA``."""
    return (
        records.with_columns(
            pl.lit(table).alias("table"),
            pl.lit(source).alias("source"),
            pl.lit(run_id).alias("run_id"),
            pl.lit(now).cast(UTC_MICROS).alias("quarantined_at"),
        )
        .with_columns(
            # As in contracts.split_valid: same table + rule + column + row -> same id, so
            # re-reading a bad row in a later run adds no second record. The row is hashed
            # without its null fields, so a column added upstream (null for old rows) does not
            # make an old bad row look new.
            sha256_hex(
                pl.concat_str(
                    [
                        "table",
                        "rule",
                        "column",
                        pl.col("row").map_batches(_without_nulls, return_dtype=pl.String),
                    ],
                    separator="\x1f",
                    ignore_nulls=True,
                )
            ).alias("quarantine_id")
        )
        .select([pl.col(name).cast(dtype) for name, dtype in QUARANTINE_SCHEMA.items()])
        .unique("quarantine_id", keep="first", maintain_order=True)
    )


def _without_nulls(rows: pl.Series) -> pl.Series:
    """JSON objects re-encoded without null members (other text unchanged)."""

    def canonical(text: str) -> str:
        try:
            value = json.loads(text)
        except ValueError:
            return text
        if not isinstance(value, dict):
            return text
        return json.dumps({k: v for k, v in value.items() if v is not None}, sort_keys=True)

    return pl.Series(
        rows.name, [None if r is None else canonical(r) for r in rows.to_list()], dtype=pl.String
    )


def _key_check(primary_key: str, schema: pl.Schema) -> _Check:
    if primary_key not in schema:
        missing = pl.lit(True)
        value = pl.lit(None, pl.String)
    else:
        key = pl.col(primary_key)
        missing = key.is_null()
        if isinstance(schema[primary_key], _TEXT_TYPES):
            missing = missing | (key.cast(pl.String).str.strip_chars() == "")
        value = _as_text(key, schema[primary_key])
    return _Check(MISSING_PRIMARY_KEY, primary_key, missing, value)


def _conform(expr: pl.Expr, src: pl.DataType, dst: pl.DataType) -> tuple[pl.Expr, pl.Expr]:
    """``expr`` as ``dst``, and where a non-null value could not get there without loss."""
    present = expr.is_not_null()
    if isinstance(src, _NESTED_TYPES) or isinstance(dst, _NESTED_TYPES):
        if isinstance(src, _NESTED_TYPES) and type(src) is type(dst):
            # e.g. a struct that gained a field: the lake's schema merge evolves nested types.
            return expr, pl.lit(False)
        return pl.lit(None, dst), present
    if isinstance(dst, pl.String):
        return expr.cast(pl.String), pl.lit(False)
    if isinstance(src, _TEXT_TYPES):
        text = expr.cast(pl.String).str.strip_chars()
        converted = _from_text(text, dst)
        # Blank text is "no value", not a conflict.
        return converted, (text.str.len_chars() > 0) & converted.is_null()
    if isinstance(dst, pl.Datetime):
        if isinstance(src, pl.Datetime | pl.Date):
            return _to_datetime(parse_timestamp(expr, src), dst), pl.lit(False)
        return pl.lit(None, dst), present  # a number is no timestamp: which epoch, which unit?
    if isinstance(dst, pl.Date):
        if isinstance(src, pl.Datetime):
            utc = parse_timestamp(expr, src)
            return utc.dt.date(), present & (utc.dt.truncate("1d") != utc)
        return pl.lit(None, dst), present
    if (src.is_numeric() or isinstance(src, pl.Boolean)) and (
        dst.is_numeric() or isinstance(dst, pl.Boolean)
    ):
        converted = expr.cast(dst, strict=False)
        round_trip = converted.cast(src, strict=False)
        return converted, present & (converted.is_null() | (round_trip != expr))
    return pl.lit(None, dst), present


def _from_text(text: pl.Expr, dst: pl.DataType) -> pl.Expr:
    if isinstance(dst, pl.Datetime):
        return _to_datetime(parse_timestamp(text, pl.String()), dst)
    if isinstance(dst, pl.Date):
        return pl.coalesce(
            text.str.strptime(pl.Date, "%Y-%m-%d", strict=False, exact=True),
            parse_timestamp(text, pl.String()).dt.date(),
        )
    if isinstance(dst, pl.Boolean):
        return parse_bool(text, pl.String())
    if dst.is_numeric() or isinstance(dst, pl.Binary):
        return text.cast(dst, strict=False)
    return pl.lit(None, dst)


def _to_datetime(utc: pl.Expr, dst: pl.Datetime) -> pl.Expr:
    """A UTC timestamp expression in bronze's unit and zone (naive bronze columns hold UTC)."""
    zoned = utc.dt.replace_time_zone(None) if dst.time_zone is None else utc
    if dst.time_zone is not None and dst.time_zone != "UTC":
        zoned = utc.dt.convert_time_zone(dst.time_zone)
    return zoned.cast(dst)


def _as_text(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A value as quarantine text (nested values as JSON)."""
    if isinstance(dtype, _NESTED_TYPES):
        return pl.struct(expr.alias("v")).struct.json_encode().str.slice(5, None).str.head(-1)
    if isinstance(dtype, pl.Binary):
        return expr.bin.encode("hex")
    return expr.cast(pl.String).str.slice(0, _MAX_VALUE_CHARS)


def _jsonable(name: str, dtype: pl.DataType) -> pl.Expr:
    # polars cannot JSON-encode binary (it panics); hex keeps the bytes recoverable.
    if isinstance(dtype, pl.Binary):
        return pl.col(name).bin.encode("hex")
    return pl.col(name)


def _type_name(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Datetime):
        return f"Datetime[{dtype.time_unit}, {dtype.time_zone or 'naive'}]"
    if isinstance(dtype, pl.Decimal):
        return f"Decimal[{dtype.precision}, {dtype.scale}]"
    return type(dtype).__name__


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS] + " ..."
