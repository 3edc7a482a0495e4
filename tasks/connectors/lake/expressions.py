"""SQL the lake hands to delta-rs (DataFusion): MERGE conditions and partition predicates.

Column names are always quoted, so a column called ``order`` or ``a-b`` is safe; values in
partition predicates are rendered as literals of the column's type.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

import polars as pl

from tasks.errors import LakeError

__all__ = ["changed_predicate", "compared", "keys_match", "partition_predicate", "quote"]


def quote(column: str) -> str:
    """Quote a column name for a delta-rs (DataFusion) SQL expression."""
    return "`" + column.replace("`", "``") + "`"


def keys_match(keys: Sequence[str]) -> str:
    """MERGE condition joining target ``t`` and source ``s`` on every key column."""
    return " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in keys)


def compared(columns: Sequence[str]) -> list[str]:
    """Columns that decide whether a matched row changed: ingest metadata (``_*``) does not."""
    return [c for c in columns if not c.startswith("_")]


def changed_predicate(value_columns: Sequence[str], target_columns: set[str]) -> str:
    """MERGE condition true when a matched row differs in some of ``value_columns``."""
    # Each comparison is parenthesised: DataFusion parses `a IS DISTINCT FROM b OR c ...` with
    # the OR binding inside the comparison. A column the table does not have yet "changed" when
    # the source brings a value for it (the evolved column starts out null).
    parts = [
        f"(t.{quote(c)} IS DISTINCT FROM s.{quote(c)})"
        if c in target_columns
        else f"(s.{quote(c)} IS NOT NULL)"
        for c in value_columns
    ]
    return " OR ".join(parts)


def partition_predicate(column: str, values: pl.Series) -> str:
    """SQL selecting the partitions whose values appear in ``values``."""
    literals: list[str] = []
    has_null = False
    for value in values.unique().to_list():
        if value is None:
            has_null = True
        elif isinstance(value, bool):
            literals.append("true" if value else "false")
        elif isinstance(value, int):
            literals.append(str(value))
        elif isinstance(value, str):
            literals.append("'" + value.replace("'", "''") + "'")
        elif isinstance(value, date) and not isinstance(value, datetime):
            # An ISO date string, which DataFusion coerces to the column's date type.
            literals.append(f"'{value.isoformat()}'")
        else:
            raise LakeError(
                f"cannot build a partition predicate for column {column!r} of type "
                f"{values.dtype}; partition by a string, integer, boolean or date column"
            )
    clauses = []
    if literals:
        clauses.append(f"{quote(column)} IN ({', '.join(literals)})")
    if has_null:
        clauses.append(f"{quote(column)} IS NULL")
    return "(" + " OR ".join(clauses) + ")"
