"""Tables in transaction databases (PostgreSQL, MySQL/MariaDB, SQLite), read in keyset chunks.

Each chunk is one ``SELECT ... ORDER BY cursor, key LIMIT n`` that starts strictly after the last
``(cursor, key)`` pair of the previous chunk, so rows that share a cursor value at a chunk
boundary are never skipped and no long transaction is held open. Rows whose key or cursor is
NULL cannot be paged by value; they are read in passes of their own rather than lost.

Incremental runs start at the watermark (the largest cursor committed in bronze, inclusive,
minus an optional overlap); the merge into bronze absorbs rows read twice. The watermark arrives
as text (``committed_watermark`` casts bronze's value to a string) and is turned back into the
cursor column's own type (timestamp with or without zone, date, integer, decimal, text), so the
comparison happens in the database's type system on all three engines.

Types map to Delta as: integers -> Int64, floats -> Float64, NUMERIC/DECIMAL -> Float64 (or
Decimal(p, s)), timestamps with or without zone -> Datetime(us, UTC) (zone-less values are read in
``naive_timezone``), dates -> Date, booleans (incl. MySQL ``TINYINT(1)``) -> Boolean, JSON -> JSON
text, binary -> Binary, everything else -> String. A chunk whose values do not fit the column's
declared type (SQLite stores anything anywhere) keeps that column as text; the ingest task's drift
check then quarantines the rows bronze cannot take.

Built on SQLAlchemy 2 Core with psycopg 3 and PyMySQL. Credentials never appear in messages:
URLs are rendered with the password masked, and driver messages are scrubbed of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import polars as pl
import sqlalchemy as sa
from sqlalchemy.dialects import mysql as sa_mysql
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, NoSuchTableError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from tasks.connectors.sources.base import SourceBatch, WriteMode
from tasks.connectors.sources.sql_dialects import DIALECTS, CursorKind, SqlDialect, mask_url
from tasks.connectors.sources.sql_values import (
    SQLITE_TIME_FORMAT,
    binary_series,
    bool_series,
    first_line,
    float_series,
    json_series,
    localise,
    parse_instant,
    scrub,
    sqlite_date_series,
    sqlite_timestamps,
    text_series,
    to_zone,
    typed_series,
)
from tasks.core.config import SqlSource, sql_dialect
from tasks.core.settings import resolve_secret
from tasks.errors import SourceError

__all__ = ["DIALECTS", "SqlDialect", "SqlTableReader", "mask_url", "open_sql_source"]

Decimals = Literal["float64", "decimal"]


# --- column plans ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    name: str
    dtype: pl.DataType
    build: Callable[[str, Sequence[Any]], pl.Series]
    kind: CursorKind
    nullable: bool


class SqlTableReader:
    """One table of a database, read in keyset chunks on ``(cursor_field, primary_key)``.

    Args:
        url: ``postgresql://user@host:port/db``, ``mysql://user@host:port/db`` (MariaDB too) or
            ``sqlite:///path``; explicit drivers (``postgresql+psycopg``, ``mysql+pymysql``) too.
        password: the database password (from a secret), set on the URL, never logged.
        source_name, table, primary_key, cursor_field: what to read; ``db_schema`` qualifies
            the table (a PostgreSQL schema, a MySQL database).
        columns: columns to read (key and cursor are always added); None reads all.
        chunk_size: rows per chunk (and per yielded batch).
        overlap: re-read window before the watermark for timestamp cursors.
        decimals: NUMERIC/DECIMAL as ``float64`` or ``decimal`` (exact; unconstrained -> text).
        naive_timezone: zone of timestamps stored without one.
        connect_timeout: seconds to wait for a connection.

    Raises:
        SourceError: for an unsupported or malformed URL (the password never shown).
    """

    write_mode: WriteMode = "merge"

    def __init__(
        self,
        url: str,
        *,
        source_name: str,
        table: str,
        primary_key: str,
        cursor_field: str,
        chunk_size: int = 10_000,
        password: str | None = None,
        db_schema: str | None = None,
        columns: Sequence[str] | None = None,
        overlap: timedelta = timedelta(0),
        decimals: Decimals = "float64",
        naive_timezone: str = "UTC",
        connect_timeout: float = 10.0,
    ) -> None:
        self._name = source_name
        self._table = table
        self._schema = db_schema
        self.primary_key = primary_key
        self.cursor_field = cursor_field
        self._columns = list(columns) if columns is not None else None
        self._chunk = chunk_size
        self._overlap = overlap
        self._decimals: Decimals = decimals
        self._tz = naive_timezone
        self._password = password
        self._sqlite_path: Path | None = None
        try:
            family = sql_dialect(url)
        except ValueError as exc:
            raise SourceError(f"source {source_name!r}: unsupported database URL: {exc}") from None
        self._dialect = DIALECTS[family]
        self._family = family
        self._url = self._build_url(url, password)
        self._connect_timeout = connect_timeout

    def __repr__(self) -> str:
        return f"SqlTableReader({self._name!r}, {self.masked_url!r}, table={self._table!r})"

    @property
    def masked_url(self) -> str:
        """The database URL with the password masked (safe to log)."""
        return self._masked

    def close(self) -> None:
        """Connections are opened per read (no pool); nothing to release."""

    def probe(self) -> int:
        """Connect, ``SELECT 1`` and find the table (reads no rows): its number of columns.

        Raises:
            SourceError: naming the source, the masked URL and the table.
        """
        engine = self._engine()
        try:
            try:
                conn = engine.connect()
            except SQLAlchemyError as exc:
                raise SourceError(
                    self._describe(f"cannot connect to {self.masked_url}", exc)
                ) from None
            with conn:
                conn.execute(sa.text("SELECT 1"))
                return len(self._reflect(conn))
        except SQLAlchemyError as exc:
            what = f"checking table {self._qualified!r} in {self.masked_url} failed"
            raise SourceError(self._describe(what, exc)) from None
        finally:
            engine.dispose()

    def batches(
        self, *, since: str | None, is_committed: Callable[[str], bool]
    ) -> Iterator[SourceBatch]:
        del is_committed  # merged on the primary key: re-reading a row is harmless
        engine = self._engine()
        try:
            try:
                conn = engine.connect()
            except SQLAlchemyError as exc:
                what = f"cannot connect to {self.masked_url}"
                raise SourceError(self._describe(what, exc)) from None
            with conn:
                columns = self._reflect(conn)
                yield from self._read(conn, columns, since)
        except SQLAlchemyError as exc:
            what = f"reading table {self._qualified!r} from {self.masked_url} failed"
            # `from None`: the driver's exception (and its chain) is not shown anywhere else,
            # so nothing it might quote from the connection string can leak through it.
            raise SourceError(self._describe(what, exc)) from None
        finally:
            engine.dispose()

    # --- setup -----------------------------------------------------------------------------------

    def _build_url(self, url: str, password: str | None) -> URL:
        try:
            parsed = sa.make_url(url)
        except ArgumentError:
            raise SourceError(
                f"source {self._name!r}: malformed database URL (expected e.g. "
                "postgresql://user@host:5432/db)"
            ) from None
        parsed = parsed.set(drivername=self._dialect.drivername)
        if password is not None:
            if parsed.password is not None:
                raise SourceError(
                    f"source {self._name!r}: {mask_url(parsed)}: the URL already has a password; "
                    "give it in one place only"
                )
            parsed = parsed.set(password=password)
        elif parsed.password is not None:
            self._password = str(parsed.password)
        self._masked = mask_url(parsed)
        if self._family == "sqlite":
            return self._sqlite_read_only(parsed)
        return parsed

    def _sqlite_read_only(self, url: URL) -> URL:
        database = url.database or ""
        if not database or database == ":memory:":
            raise SourceError(f"source {self._name!r}: sqlite URL needs a file path")
        self._sqlite_path = Path(database)
        # Read-only URI: an ingest must never change (or create) the source database.
        return URL.create(
            "sqlite",
            database=f"file:{quote(database, safe='/')}",
            query={"mode": "ro", "uri": "true"},
        )

    def _engine(self) -> Engine:
        if self._sqlite_path is not None and not self._sqlite_path.exists():
            raise SourceError(
                f"source {self._name!r}: database file {self._sqlite_path} does not exist"
            )
        return sa.create_engine(
            self._url,
            poolclass=NullPool,
            # Statement parameters hold row values (personal data); keep them out of errors.
            hide_parameters=True,
            isolation_level="AUTOCOMMIT",
            connect_args=self._dialect.connect_args(self._connect_timeout),
        )

    def _reflect(self, conn: Connection) -> dict[str, _Column]:
        try:
            found = sa.inspect(conn).get_columns(self._table, schema=self._schema)
        except NoSuchTableError:
            raise SourceError(
                f"source {self._name!r}: table {self._qualified!r} not found in {self.masked_url}"
            ) from None
        if not found:  # SQLite reflects a missing table as no columns
            raise SourceError(
                f"source {self._name!r}: table {self._qualified!r} not found in {self.masked_url}"
            )
        by_name = {c["name"]: c for c in found}
        wanted = list(by_name) if self._columns is None else list(self._columns)
        wanted = list(dict.fromkeys([*wanted, self.primary_key, self.cursor_field]))
        missing = [name for name in wanted if name not in by_name]
        if missing:
            raise SourceError(
                f"source {self._name!r}: table {self._qualified!r} has no column(s) {missing}; "
                f"columns: {sorted(by_name)}"
            )
        return {
            name: self._plan(name, by_name[name]["type"], bool(by_name[name].get("nullable", True)))
            for name in wanted
        }

    @property
    def _qualified(self) -> str:
        return f"{self._schema}.{self._table}" if self._schema else self._table

    # --- reading ---------------------------------------------------------------------------------

    def _read(
        self, conn: Connection, columns: dict[str, _Column], since: str | None
    ) -> Iterator[SourceBatch]:
        table = sa.table(self._table, *[sa.column(n) for n in columns], schema=self._schema)
        cur, key = table.c[self.cursor_field], table.c[self.primary_key]
        cursor_column = columns[self.cursor_field]
        names = list(columns)
        cur_at, key_at = names.index(self.cursor_field), names.index(self.primary_key)

        def chunk(where: list[sa.ColumnElement[bool]], order: list[Any]) -> list[Sequence[Any]]:
            query = sa.select(table).where(*where).order_by(*order).limit(self._chunk)
            return list(conn.execute(query).all())

        # 1. Rows without a key (only a nullable "key" can have them): they cannot be paged by
        #    value, so they are read in one query (an anomaly, expected to be small; a
        #    server-side cursor would need a transaction held open) and handed over in chunks.
        #    The ingest drift check quarantines them as missing a key.
        if columns[self.primary_key].nullable:
            query = sa.select(table).where(key.is_(None))
            for part in conn.execute(query).partitions(self._chunk):
                yield self._batch(columns, list(part))
        has_key = [key.is_not(None)] if columns[self.primary_key].nullable else []

        # 2. Rows without a cursor: never "newer" than any watermark, so read them on every run
        #    (the merge makes re-reading an unchanged row a no-op) rather than never.
        if cursor_column.nullable:
            after: list[sa.ColumnElement[bool]] = []
            while True:
                rows = chunk([cur.is_(None), *has_key, *after], [key])
                if rows:
                    yield self._batch(columns, rows)
                if len(rows) < self._chunk:
                    break
                after = [key > sa.literal(rows[-1][key_at])]

        # 3. The keyset walk on (cursor, key) from the watermark.
        start = self._since_filter(cur, cursor_column, since)
        where = [cur.is_not(None), *has_key, *start]
        while True:
            rows = chunk(where, [cur, key])
            if rows:
                yield self._batch(columns, rows)
            if len(rows) < self._chunk:
                return
            last_cur = sa.literal(rows[-1][cur_at])
            last_key = sa.literal(rows[-1][key_at])
            # `cur >= c AND (cur > c OR key > k)`: the leading range lets an index on
            # (cursor, key) seek instead of scan; the OR keeps ties at the boundary.
            where = [
                cur.is_not(None),
                *has_key,
                cur >= last_cur,
                sa.or_(cur > last_cur, key > last_key),
            ]

    def _since_filter(
        self, cur: sa.ColumnClause[Any], column: _Column, since: str | None
    ) -> list[sa.ColumnElement[bool]]:
        if since is None:
            return []
        value = self._cursor_value(column, since)
        if column.kind == "sqlite_time":
            # SQLite keeps timestamps as text in whatever format the writer chose; compare them
            # normalised (offsets applied, millisecond precision). Truncation only widens an
            # inclusive lower bound, and a value SQLite cannot parse is re-read, never skipped.
            normalised = sa.func.strftime(SQLITE_TIME_FORMAT, cur)
            return [sa.or_(normalised >= sa.literal(value), normalised.is_(None))]
        return [cur >= sa.literal(value)]

    def _cursor_value(self, column: _Column, since: str) -> Any:
        """The watermark text as a parameter of the cursor column's own type."""
        kind = column.kind
        try:
            if kind in ("aware", "utc_naive", "local_naive", "sqlite_time"):
                moment = parse_instant(since) - self._overlap
                if kind == "aware":
                    return moment
                if kind == "utc_naive":
                    return moment.replace(tzinfo=None)
                local = to_zone(moment, self._tz).replace(tzinfo=None)
                if kind == "sqlite_time":
                    return local.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
                return local
            if kind == "date":
                day = date.fromisoformat(since.strip()[:10])
                return day.isoformat() if self._family == "sqlite" else day
            if kind == "int":
                return int(Decimal(since.strip()))
            if kind == "float":
                return float(since)
            if kind == "decimal":
                return Decimal(since.strip())
        except (ValueError, InvalidOperation, OverflowError):
            raise SourceError(
                f"source {self._name!r}: watermark {since!r} from bronze is not a value of "
                f"cursor column {self.cursor_field!r} ({column.dtype}); run a full refresh"
            ) from None
        return since

    def _batch(self, columns: dict[str, _Column], rows: Sequence[Sequence[Any]]) -> SourceBatch:
        values = list(zip(*rows, strict=True))
        series = []
        for position, column in enumerate(columns.values()):
            try:
                series.append(column.build(column.name, values[position]))
            except SourceError:
                raise
            except Exception:
                # Values that do not fit the declared type (SQLite is dynamically typed, MySQL
                # has zero dates): keep them as text; the drift check decides what bronze takes.
                series.append(text_series(column.name, values[position]))
        return SourceBatch(pl.DataFrame(series), origin=self._qualified)

    # --- type mapping ----------------------------------------------------------------------------

    def _plan(self, name: str, type_: sa.types.TypeEngine[Any], nullable: bool) -> _Column:
        def column(
            dtype: pl.DataType, build: Callable[[str, Sequence[Any]], pl.Series], kind: CursorKind
        ) -> _Column:
            return _Column(name, dtype, build, kind, nullable)

        if isinstance(type_, sa.Boolean) or (
            self._family == "mysql"
            and isinstance(type_, sa_mysql.TINYINT)
            and getattr(type_, "display_width", None) == 1
        ):
            return column(pl.Boolean(), bool_series, "int")
        if isinstance(type_, sa.Integer):
            return column(pl.Int64(), typed_series(pl.Int64()), "int")
        if isinstance(type_, sa.Float):
            return column(pl.Float64(), float_series, "float")
        if isinstance(type_, sa.Numeric):
            precision, scale = type_.precision, type_.scale
            if self._decimals == "float64":
                return column(pl.Float64(), float_series, "decimal")
            if precision is None or precision > 38:
                return column(pl.String(), text_series, "decimal")
            dtype = pl.Decimal(precision, scale or 0)
            return column(dtype, typed_series(dtype), "decimal")
        if isinstance(type_, sa.DateTime):
            kind = self._dialect.timestamp_kind(type_)
            return column(pl.Datetime("us", "UTC"), self._timestamp_builder(kind), kind)
        if isinstance(type_, sa.Date):
            build = sqlite_date_series if self._family == "sqlite" else typed_series(pl.Date())
            return column(pl.Date(), build, "date")
        if isinstance(type_, sa.JSON):
            return column(pl.String(), json_series, "text")
        if isinstance(type_, sa.LargeBinary | sa.BINARY | sa.VARBINARY):
            return column(pl.Binary(), binary_series, "text")
        return column(pl.String(), text_series, "text")

    def _timestamp_builder(self, kind: CursorKind) -> Callable[[str, Sequence[Any]], pl.Series]:
        tz = self._tz

        def build(name: str, values: Sequence[Any]) -> pl.Series:
            if kind == "aware":
                return pl.Series(name, values, dtype=pl.Datetime("us", "UTC"), strict=True)
            if kind == "sqlite_time":
                return sqlite_timestamps(name, values, tz)
            naive = pl.Series(name, values, dtype=pl.Datetime("us"), strict=True)
            zone = "UTC" if kind == "utc_naive" else tz
            return localise(naive, zone, column=name, source=self._name)

        return build

    def _describe(self, what: str, exc: SQLAlchemyError) -> str:
        original = getattr(exc, "orig", None) or exc
        reason = first_line(original)
        message = f"source {self._name!r}: {what}: {type(original).__name__}: {reason}"
        return scrub(message, self._password)


# --- value conversion ------------------------------------------------------------------------


def open_sql_source(name: str, config: SqlSource) -> SqlTableReader:
    """The reader for a ``kind: sql`` source; the password comes from its secret."""
    password = None if config.password is None else resolve_secret(config.password)
    return SqlTableReader(
        config.url,
        source_name=name,
        table=config.table,
        primary_key=config.primary_key,
        cursor_field=config.cursor_field,
        chunk_size=config.chunk_size,
        password=None if password is None else password.get_secret_value(),
        db_schema=config.db_schema,
        columns=config.columns,
        overlap=timedelta(seconds=config.overlap_seconds),
        decimals=config.decimals,
        naive_timezone=config.naive_timezone,
        connect_timeout=config.connect_timeout_seconds,
    )
