"""Database values to polars series: the column builders of the SQL source.

Each builder turns one column of a chunk (a sequence of driver values) into a typed series or
raises, in which case the reader keeps the column as text and the drift check decides.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

import polars as pl

from tasks.errors import SourceError

SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%f"  # SQLite strftime: milliseconds are its finest unit
_OFFSET_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.fZ",
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%dT%H:%M:%S%.f%:z",
    "%Y-%m-%dT%H:%M:%S%:z",
    "%Y-%m-%d %H:%M:%S%.f%:z",
    "%Y-%m-%d %H:%M:%S%:z",
    "%Y-%m-%d %H:%M:%S%.fZ",
    "%Y-%m-%d %H:%M:%SZ",
)
_NAIVE_FORMATS = (
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
)


def typed_series(dtype: pl.DataType) -> Callable[[str, Sequence[Any]], pl.Series]:
    def build(name: str, values: Sequence[Any]) -> pl.Series:
        return pl.Series(name, values, dtype=dtype, strict=True)

    return build


def bool_series(name: str, values: Sequence[Any]) -> pl.Series:
    if all(v is None or v in (0, 1) for v in values):  # True/False are 1/0 too
        return pl.Series(name, [None if v is None else bool(v) for v in values], dtype=pl.Boolean)
    return pl.Series(name, values, dtype=pl.Int64, strict=True)  # a TINYINT used as a number


def float_series(name: str, values: Sequence[Any]) -> pl.Series:
    return pl.Series(
        name, [None if v is None else float(v) for v in values], dtype=pl.Float64, strict=True
    )


def text_series(name: str, values: Sequence[Any]) -> pl.Series:
    return pl.Series(name, [None if v is None else _text(v) for v in values], dtype=pl.String)


def json_series(name: str, values: Sequence[Any]) -> pl.Series:
    # psycopg decodes json/jsonb into Python values, PyMySQL and SQLite hand over the text.
    texts = [
        None if v is None else v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        for v in values
    ]
    return pl.Series(name, texts, dtype=pl.String)


def binary_series(name: str, values: Sequence[Any]) -> pl.Series:
    return pl.Series(name, [None if v is None else bytes(v) for v in values], dtype=pl.Binary)


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def localise(naive: pl.Series, zone: str, *, column: str, source: str) -> pl.Series:
    if zone == "UTC":
        return naive.dt.replace_time_zone("UTC")
    try:
        local = naive.dt.replace_time_zone(zone, ambiguous="earliest", non_existent="raise")
    except pl.exceptions.PolarsError as exc:
        raise SourceError(
            f"source {source!r}: column {column!r} holds a time that does not exist in "
            f"{zone} (a DST gap): {first_line(exc)}"
        ) from None
    return local.dt.convert_time_zone("UTC")


def sqlite_timestamps(name: str, values: Sequence[Any], zone: str) -> pl.Series:
    if any(v is not None and not isinstance(v, str) for v in values):
        raise TypeError("non-text timestamp")  # -> kept as text by the caller
    text = pl.Series(name, values, dtype=pl.String).str.strip_chars()
    with_offset = [
        text.str.strptime(pl.Datetime("us"), fmt, strict=False, exact=True).dt.convert_time_zone(
            "UTC"
        )
        if "%z" in fmt or "%:z" in fmt
        else text.str.strptime(pl.Datetime("us", "UTC"), fmt, strict=False, exact=True)
        for fmt in _OFFSET_FORMATS
    ]
    aware = pl.select(pl.coalesce(with_offset)).to_series()
    naive = pl.select(
        pl.coalesce(
            [
                text.str.strptime(pl.Datetime("us"), fmt, strict=False, exact=True)
                for fmt in _NAIVE_FORMATS
            ]
        )
    ).to_series()
    localised = naive.dt.replace_time_zone(
        zone, ambiguous="earliest", non_existent="raise"
    ).dt.convert_time_zone("UTC")
    parsed = aware.fill_null(localised).alias(name)
    if (parsed.is_null() & text.is_not_null()).any():
        raise ValueError("unparseable timestamp")  # -> kept as text by the caller
    return parsed


def sqlite_date_series(name: str, values: Sequence[Any]) -> pl.Series:
    text = pl.Series(name, values, dtype=pl.String)
    parsed = text.str.strptime(pl.Date, "%Y-%m-%d", strict=False, exact=True)
    if (parsed.is_null() & text.is_not_null()).any():
        raise ValueError("unparseable date")
    return parsed


def parse_instant(text: str) -> datetime:
    """A watermark as an aware datetime; zone-less text is UTC (bronze timestamps are UTC)."""
    value = text.strip()
    if value.endswith(" UTC"):
        value = value[:-4]
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def to_zone(moment: datetime, zone: str) -> datetime:
    from zoneinfo import ZoneInfo

    return moment.astimezone(ZoneInfo(zone))


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:500] if lines else type(exc).__name__


def scrub(message: str, password: str | None) -> str:
    """Remove the password from a message, however a driver chose to quote it."""
    if password:
        message = message.replace(password, "***")
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", message)
