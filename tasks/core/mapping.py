"""From gold rows to what a platform receives: mapped, formatted field values and holdouts.

:func:`payload_expr` turns an audience's field mapping (:mod:`tasks.core.config_publish`) into
one JSON text per member, ``{"fields": {...}, "tags": [...]}``, with values already in the form
the platform gets: text, numbers rounded to the configured decimals, dates formatted, booleans.
The sync ledger hashes this text, so a changed attribute is an update and an unchanged one sends
nothing.

:func:`holdout_share` places a member of an audience's segment in [0, 1) by a keyed hash of its
contact key and the segment name; the members below the audience's ``holdout`` share are its
control group: the same people on every run and every destination, and raising the share only
adds people (nobody held out at 10 % is sent at 20 %). The transform records the positions in
gold (:mod:`tasks.engine.holdouts`) and the publish reads them from there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence

import polars as pl

from tasks.core.config_publish import FieldMapping

DEFAULT_DATE_FORMAT = "%Y-%m-%d"
_UNIT = float(2**64)


def mapped_columns(fields: Mapping[str, FieldMapping]) -> set[str]:
    """The gold columns a mapping reads."""
    return {m.column for m in fields.values() if m.column is not None}


def _value_expr(name: str, mapping: FieldMapping, segment: str, schema: pl.Schema) -> pl.Expr:
    if mapping.column is None:
        value = mapping.value
        if isinstance(value, str):
            value = value.replace("{segment}", segment)
        return _typed(pl.lit(value), mapping.type, None).alias(name)
    column = pl.col(mapping.column)
    dtype = schema[mapping.column]
    if dtype.is_temporal():
        pattern = mapping.format or DEFAULT_DATE_FORMAT
        return (
            column.dt.strftime(pattern).alias(name)
            if mapping.type in ("text", "date")
            else (_typed(column, mapping.type, dtype).alias(name))
        )
    if dtype.is_numeric() and mapping.decimals is not None:
        rounded = column.cast(pl.Float64).round(mapping.decimals)
        if mapping.decimals == 0:
            rounded = rounded.cast(pl.Int64)
        return _typed(rounded, mapping.type, pl.Float64()).alias(name)
    return _typed(column, mapping.type, dtype).alias(name)


def _typed(expr: pl.Expr, type_: str, dtype: pl.DataType | None) -> pl.Expr:
    if type_ == "number":
        return expr if dtype is not None and dtype.is_numeric() else expr.cast(pl.Float64)
    if type_ == "boolean":
        return expr.cast(pl.Boolean)
    if type_ in ("text", "date"):
        return expr.cast(pl.String)
    return expr


def payload_expr(
    fields: Mapping[str, FieldMapping], tags: Sequence[str], segment: str, schema: pl.Schema
) -> pl.Expr:
    """One JSON text per row: the mapped, formatted values and the audience's tags."""
    tail = ',"tags":' + json.dumps(list(tags)) + "}"
    if not fields:
        return pl.lit('{"fields":{}' + tail).alias("payload")
    values = [_value_expr(name, m, segment, schema) for name, m in fields.items()]
    encoded = pl.struct(values).struct.json_encode()
    return pl.concat_str([pl.lit('{"fields":'), encoded, pl.lit(tail)]).alias("payload")


def holdout_share(contact_key: str, segment: str, pepper: bytes) -> float:
    """Where a contact falls in [0, 1) for one segment: HMAC-SHA256(pepper, key + segment)."""
    digest = hmac.new(pepper, f"{contact_key}\x1f{segment}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / _UNIT
