"""How the SQL source reaches each database family: driver, session setup, timestamp semantics."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import mysql as sa_mysql
from sqlalchemy.engine import URL

__all__ = ["DIALECTS", "CursorKind", "SqlDialect", "mask_url"]

# How a cursor column's values compare, which decides how the watermark text becomes a
# parameter: aware datetimes, naive UTC datetimes (MySQL TIMESTAMP in a UTC session), naive
# wall-clock datetimes in `naive_timezone`, SQLite text timestamps, dates, numbers, text.
CursorKind = Literal[
    "aware", "utc_naive", "local_naive", "sqlite_time", "date", "int", "float", "decimal", "text"
]


@dataclass(frozen=True)
class SqlDialect:
    """How to reach one database family: driver, session setup, timestamp semantics."""

    drivername: str
    connect_args: Callable[[float], dict[str, Any]]
    timestamp_kind: Callable[[sa.types.TypeEngine[Any]], CursorKind]


def _pg_connect_args(timeout: float) -> dict[str, Any]:
    # Session in UTC: timestamptz values come back as UTC, and comparisons of a zone-less
    # column with a parameter never depend on the server's default zone.
    return {"connect_timeout": max(2, math.ceil(timeout)), "options": "-c TimeZone=UTC"}


def _mysql_connect_args(timeout: float) -> dict[str, Any]:
    # A UTC session makes TIMESTAMP columns read and compare in UTC (they are stored in UTC and
    # converted to the session zone); DATETIME columns are zone-less wall-clock values.
    return {
        "connect_timeout": max(1, math.ceil(timeout)),
        "read_timeout": 300,
        "init_command": "SET time_zone = '+00:00'",
        "charset": "utf8mb4",
    }


def _sqlite_connect_args(timeout: float) -> dict[str, Any]:
    return {"timeout": timeout}


def _pg_timestamp(type_: sa.types.TypeEngine[Any]) -> CursorKind:
    return "aware" if getattr(type_, "timezone", False) else "local_naive"


def _mysql_timestamp(type_: sa.types.TypeEngine[Any]) -> CursorKind:
    return "utc_naive" if isinstance(type_, sa_mysql.TIMESTAMP) else "local_naive"


def _sqlite_timestamp(type_: sa.types.TypeEngine[Any]) -> CursorKind:
    del type_
    return "sqlite_time"


DIALECTS: dict[str, SqlDialect] = {
    "postgresql": SqlDialect("postgresql+psycopg", _pg_connect_args, _pg_timestamp),
    "mysql": SqlDialect("mysql+pymysql", _mysql_connect_args, _mysql_timestamp),
    "sqlite": SqlDialect("sqlite", _sqlite_connect_args, _sqlite_timestamp),
}


def mask_url(url: URL) -> str:
    """The URL as text with any password replaced by ``***``."""
    return url.render_as_string(hide_password=True)
