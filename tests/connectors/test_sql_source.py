"""The SQL source against real PostgreSQL and MariaDB/MySQL servers, and SQLite files.

Server URLs come from ``AUDIENCE_LAKE_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``) and ``AUDIENCE_LAKE_TEST_MYSQL_URL`` (default
``mysql://root@127.0.0.1:3306/test``). Under ``CI=true`` a server that does not answer fails the
tests; elsewhere they are skipped with the reason (shown by ``-ra``). Every test creates its own
uniquely named table and drops it afterwards.

The ingest-path tests call the real ``ingest_source`` task function (``.fn``, with Prefect's run
logger disabled) against a real local Delta lake, so watermarks, drift checks, quarantine and
merges are the production code.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import sqlalchemy as sa
from prefect.logging import disable_run_logger
from sqlalchemy.pool import NullPool

from tasks.connectors.lake import Lake
from tasks.connectors.sources.sql import DIALECTS, SqlTableReader, mask_url
from tasks.core.config import SqlSource, parse_pipeline
from tasks.errors import ConfigError, SourceError
from tasks.ingest import bronze_table, committed_watermark, ingest_source
from tasks.quarantine import QUARANTINE
from tests.conftest import free_port

SERVERS = {
    "postgresql": ("AUDIENCE_LAKE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    "mysql": ("AUDIENCE_LAKE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
}
# Column types per engine for the shared tests: key, timestamp cursor, money, text.
DDL = {
    "postgresql": ("VARCHAR(20)", "TIMESTAMPTZ", "NUMERIC(10,2)", "TEXT"),
    "mysql": ("VARCHAR(20)", "DATETIME(6)", "DECIMAL(10,2)", "TEXT"),
    "sqlite": ("TEXT", "TIMESTAMP", "NUMERIC(10,2)", "TEXT"),
}
T0 = datetime(2026, 10, 1, 9, 30, tzinfo=UTC)


def never(_batch_id: str) -> bool:
    return False


@dataclass
class Database:
    """One engine under test: its URL (as a user writes it) and a way to run setup SQL."""

    family: str
    url: str
    engine: sa.Engine

    def execute(self, sql: str, rows: Sequence[dict[str, Any]] | None = None) -> None:
        with self.engine.begin() as conn:
            if rows is None:
                conn.exec_driver_sql(sql)
            else:
                conn.execute(sa.text(sql), [self.params(r) for r in rows])

    def params(self, row: dict[str, Any]) -> dict[str, Any]:
        """Python values as this engine's driver should receive them (UTC wall clock)."""
        out = dict(row)
        for key, value in row.items():
            if isinstance(value, datetime) and self.family == "mysql":
                out[key] = value.astimezone(UTC).replace(tzinfo=None)
            elif isinstance(value, datetime) and self.family == "sqlite":
                out[key] = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            elif isinstance(value, Decimal) and self.family == "sqlite":
                out[key] = str(value)  # sqlite3 binds no Decimal; NUMERIC affinity stores a number
        return out

    def table(self, columns: str) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.execute(f"CREATE TABLE {name} ({columns})")
        return name

    def orders_table(self) -> str:
        key, ts, money, text = DDL[self.family]
        return self.table(
            f"order_id {key} PRIMARY KEY, updated_at {ts} NOT NULL, amount {money}, "
            f"customer_email {text}"
        )

    def insert_orders(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        self.execute(
            f"INSERT INTO {table} (order_id, updated_at, amount, customer_email) "
            "VALUES (:order_id, :updated_at, :amount, :customer_email)",
            rows,
        )

    def reader(self, table: str, **options: Any) -> SqlTableReader:
        options.setdefault("cursor_field", "updated_at")
        options.setdefault("primary_key", "order_id")
        return SqlTableReader(self.url, source_name="orders", table=table, **options)


def _server(family: str) -> str:
    env, default = SERVERS[family]
    url = os.environ.get(env, default)
    engine = sa.create_engine(
        sa.make_url(url).set(drivername=DIALECTS[family].drivername),
        poolclass=NullPool,
        connect_args=DIALECTS[family].connect_args(3),
    )
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        where = mask_url(sa.make_url(url))
        reason = f"{family} test server {where} (${env}) did not answer: {type(exc).__name__}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: database tests must run)", pytrace=False)
        pytest.skip(reason)
    finally:
        engine.dispose()
    return url


@pytest.fixture(params=["postgresql", "mysql", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    family: str = request.param
    url = f"sqlite:///{tmp_path / 'source db.sqlite'}" if family == "sqlite" else _server(family)
    engine = sa.create_engine(
        sa.make_url(url).set(drivername=DIALECTS[family].drivername), poolclass=NullPool
    )
    database = Database(family, url, engine)
    created_before = set(sa.inspect(engine).get_table_names())
    yield database
    for name in set(sa.inspect(engine).get_table_names()) - created_before:
        if name.startswith("t_"):
            database.execute(f"DROP TABLE {name}")
    engine.dispose()


@pytest.fixture
def lake_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lake:
    root = tmp_path / "lake"
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", str(root))
    return Lake(str(root))


def orders(n: int, *, at: datetime = T0, prefix: str = "o") -> list[dict[str, Any]]:
    return [
        {
            "order_id": f"{prefix}{i:03d}",
            "updated_at": at,
            "amount": Decimal(f"{i}.25"),
            "customer_email": f"c{i}@example.com",
        }
        for i in range(n)
    ]


def read_all(reader: SqlTableReader, since: str | None = None) -> list[pl.DataFrame]:
    return [b.frame for b in reader.batches(since=since, is_committed=never)]


def source_config(db: Database, table: str, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> Any:
    """A ``kind: sql`` config for ``table``; a password in the test URL moves into a secret."""
    url = sa.make_url(db.url)
    options: dict[str, Any] = {}
    if url.password is not None:
        monkeypatch.setenv("AUDIENCE_LAKE_SECRET_TEST_DB_PASSWORD", str(url.password))
        options["password"] = {"secret": "test_db_password"}
        url = url.set(password=None)
    return SqlSource.model_validate(
        {
            "kind": "sql",
            "role": "orders",
            "url": url.render_as_string(hide_password=False),
            "table": table,
            "primary_key": "order_id",
            "fields": {"email": "customer_email"},
            **options,
            **extra,
        }
    )


def ingest(config: Any, *, run: str, full_refresh: bool = False) -> Any:
    with disable_run_logger():
        return ingest_source.fn(
            "orders", config, run_id=run, started_at=datetime.now(UTC), full_refresh=full_refresh
        )


# --- reading ---------------------------------------------------------------------------------


def test_full_pull_reads_every_row_once_in_chunks(db: Database) -> None:
    table = db.orders_table()
    db.insert_orders(
        table, [{**r, "updated_at": T0 + timedelta(minutes=i)} for i, r in enumerate(orders(25))]
    )
    frames = read_all(db.reader(table, chunk_size=7))
    assert [f.height for f in frames] == [7, 7, 7, 4]
    got = pl.concat(frames)
    assert sorted(got["order_id"]) == [f"o{i:03d}" for i in range(25)]
    assert got.schema["updated_at"] == pl.Datetime("us", "UTC")
    assert got.schema["amount"] == pl.Float64
    assert got.filter(pl.col("order_id") == "o003")["amount"].item() == 3.25


def test_ties_at_chunk_boundaries_are_never_skipped(db: Database) -> None:
    # 7 rows share one timestamp and straddle chunks of 3; 4 more share the next one.
    table = db.orders_table()
    later = T0 + timedelta(days=1)
    db.insert_orders(table, orders(7) + orders(4, at=later, prefix="p"))
    reader = db.reader(table, chunk_size=3)
    got = pl.concat(read_all(reader))
    assert got.height == 11 and got["order_id"].n_unique() == 11
    # The watermark as bronze hands it over: a typed timestamp cast to text.
    watermark = pl.Series([later]).cast(pl.Datetime("us", "UTC")).cast(pl.String).item()
    tail = pl.concat(read_all(reader, since=watermark))
    assert sorted(tail["order_id"]) == [f"p{i:03d}" for i in range(4)]
    # ISO text with a Z works too (a watermark written by an older text-typed bronze).
    tail = pl.concat(read_all(reader, since="2026-10-02T09:30:00Z"))
    assert sorted(tail["order_id"]) == [f"p{i:03d}" for i in range(4)]


def test_rows_without_cursor_or_key_are_read_not_lost(db: Database) -> None:
    key, ts, money, _text = DDL[db.family]
    table = db.table(f"order_id {key} NULL, updated_at {ts} NULL, amount {money}")
    rows = [
        {"order_id": f"o{i}", "updated_at": None if i % 3 == 0 else T0, "amount": i}
        for i in range(9)
    ]
    rows.append({"order_id": None, "updated_at": T0, "amount": 99})
    db.execute(
        f"INSERT INTO {table} (order_id, updated_at, amount) VALUES (:order_id, :updated_at, "
        ":amount)",
        rows,
    )
    got = pl.concat(read_all(db.reader(table, chunk_size=2)))
    assert got.height == 10
    assert got["order_id"].null_count() == 1
    # Incremental runs still see NULL-cursor rows (they can never pass a watermark).
    later = (T0 + timedelta(hours=1)).isoformat()
    tail = pl.concat(read_all(db.reader(table, chunk_size=2), since=later))
    assert sorted(tail["order_id"].drop_nulls()) == ["o0", "o3", "o6"]


def test_unknown_table_and_column_are_named(db: Database) -> None:
    with pytest.raises(SourceError, match=r"source 'orders': table 't_missing' not found"):
        read_all(db.reader("t_missing"))
    table = db.orders_table()
    with pytest.raises(SourceError, match=r"has no column\(s\) \['changed_at'\]"):
        read_all(db.reader(table, cursor_field="changed_at"))


def test_probe_connects_and_finds_the_table_without_reading_rows(db: Database) -> None:
    """What ``audience-lake doctor`` asks of a SQL source, on PostgreSQL, MariaDB and SQLite."""
    table = db.orders_table()
    assert db.reader(table).probe() >= 3  # its columns: order_id, updated_at, ...
    with pytest.raises(SourceError, match=r"source 'orders': table 't_missing' not found"):
        db.reader("t_missing").probe()


# --- type mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_postgres_types_map_to_delta_types(db: Database) -> None:
    table = db.table(
        "id BIGINT PRIMARY KEY, small SMALLINT, price NUMERIC(10,2), ratio NUMERIC, "
        "score DOUBLE PRECISION, active BOOLEAN, local_ts TIMESTAMP, updated_at TIMESTAMPTZ, "
        "born DATE, attrs JSONB, note TEXT, token UUID, blob BYTEA"
    )
    db.execute(
        f"INSERT INTO {table} VALUES "
        "(1, 2, 10.50, 1.333333333333333333333, 0.5, true, '2026-03-01 10:00:00', "
        "'2026-01-01 01:00:00+02', '1990-05-17', '{\"b\": [1, 2], \"a\": 1}', 'hi', "
        "'7d444840-9dc0-11d1-b245-5ffdce74fad2', '\\x0001'), "
        "(2, NULL, NULL, NULL, NULL, NULL, NULL, '2026-01-02 00:00:00+00', NULL, NULL, NULL, "
        "NULL, NULL)"
    )
    reader = SqlTableReader(
        db.url, source_name="pg", table=table, primary_key="id", cursor_field="updated_at",
        naive_timezone="Europe/Berlin", decimals="decimal",
    )  # fmt: skip
    df = pl.concat(read_all(reader))
    assert df.schema == pl.Schema(
        {
            "id": pl.Int64,
            "small": pl.Int64,
            "price": pl.Decimal(10, 2),
            "ratio": pl.String,  # unconstrained NUMERIC: exact text rather than a rounded guess
            "score": pl.Float64,
            "active": pl.Boolean,
            "local_ts": pl.Datetime("us", "UTC"),
            "updated_at": pl.Datetime("us", "UTC"),
            "born": pl.Date,
            "attrs": pl.String,
            "note": pl.String,
            "token": pl.String,
            "blob": pl.Binary,
        }
    )
    first = df.row(0, named=True)
    assert first["price"] == Decimal("10.50")
    assert first["ratio"] == "1.333333333333333333333"
    assert first["local_ts"] == datetime(2026, 3, 1, 9, 0, tzinfo=UTC)  # Berlin winter: UTC+1
    assert first["updated_at"] == datetime(2025, 12, 31, 23, 0, tzinfo=UTC)
    assert first["born"] == date(1990, 5, 17)
    assert first["attrs"] == '{"a": 1, "b": [1, 2]}'
    assert first["token"] == "7d444840-9dc0-11d1-b245-5ffdce74fad2"
    assert first["blob"] == b"\x00\x01"
    second = df.row(1, named=True)
    assert {k for k, v in second.items() if v is not None} == {"id", "updated_at"}
    # A zone-less cursor compares in its own zone: 10:00 Berlin is 09:00 UTC. (Row 2 has no
    # cursor value, so every run reads it.)
    by_local = SqlTableReader(
        db.url, source_name="pg", table=table, primary_key="id", cursor_field="local_ts",
        naive_timezone="Europe/Berlin",
    )  # fmt: skip
    assert pl.concat(read_all(by_local, since="2026-03-01 08:59:59+00:00"))["id"].to_list() == [
        2,
        1,
    ]
    assert pl.concat(read_all(by_local, since="2026-03-01 09:00:01+00:00"))["id"].to_list() == [2]
    # The float default: NUMERIC -> Float64.
    df = pl.concat(read_all(SqlTableReader(
        db.url, source_name="pg", table=table, primary_key="id", cursor_field="updated_at"
    )))  # fmt: skip
    assert df.schema["price"] == pl.Float64 and df.schema["ratio"] == pl.Float64
    assert df["price"].to_list() == [10.5, None]


@pytest.mark.parametrize("db", ["mysql"], indirect=True)
def test_mysql_types_map_to_delta_types(db: Database) -> None:
    table = db.table(
        "id INT PRIMARY KEY, flag BOOLEAN, level TINYINT, price DECIMAL(8,3), score DOUBLE, "
        "wall DATETIME(6), updated_at TIMESTAMP(6) NULL, born DATE, attrs JSON, note TEXT, "
        "kind ENUM('a','b')"
    )
    db.execute(
        f"INSERT INTO {table} VALUES (1, TRUE, 7, 1.125, 2.5, '2026-07-01 12:00:00.123456', "
        "'2026-07-01 12:00:00.5', '2000-02-29', '{\"k\": \"v\"}', 'héllo', 'b'), "
        "(2, NULL, NULL, NULL, NULL, NULL, '2026-07-02 00:00:00', NULL, NULL, NULL, NULL)"
    )
    reader = SqlTableReader(
        db.url, source_name="my", table=table, primary_key="id", cursor_field="updated_at",
        naive_timezone="America/New_York",
    )  # fmt: skip
    df = pl.concat(read_all(reader))
    assert df.schema["flag"] == pl.Boolean
    assert df.schema["level"] == pl.Int64
    assert df.schema["price"] == pl.Float64
    assert df.schema["wall"] == pl.Datetime("us", "UTC")
    assert df.schema["updated_at"] == pl.Datetime("us", "UTC")
    assert df.schema["born"] == pl.Date
    first = df.row(0, named=True)
    assert first["flag"] is True and first["level"] == 7 and first["price"] == 1.125
    # DATETIME is wall-clock in naive_timezone (EDT, UTC-4); TIMESTAMP is UTC (UTC session).
    assert first["wall"] == datetime(2026, 7, 1, 16, 0, 0, 123456, tzinfo=UTC)
    assert first["updated_at"] == datetime(2026, 7, 1, 12, 0, 0, 500000, tzinfo=UTC)
    assert first["note"] == "héllo" and first["kind"] == "b"
    assert df.row(1, named=True)["flag"] is None
    # The typed watermark compares in the database: only the second row is at/after it.
    tail = pl.concat(read_all(reader, since="2026-07-01 12:00:00.600000+00:00"))
    assert tail["id"].to_list() == [2]


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_sqlite_text_timestamps_parse_and_misfits_stay_text(db: Database) -> None:
    table = db.table("id INTEGER PRIMARY KEY, updated_at TIMESTAMP, qty INTEGER, born DATE")
    db.execute(
        f"INSERT INTO {table} VALUES (1, '2026-01-01T10:00:00Z', 3, '1990-01-02'), "
        "(2, '2026-01-01 12:00:00+02:00', 4, NULL), (3, '2026-01-01 10:30:00', 5, NULL), "
        "(4, '2026-01-02 00:00:00', 'many', NULL)"
    )
    reader = SqlTableReader(
        db.url, source_name="lite", table=table, primary_key="id", cursor_field="updated_at",
        chunk_size=3,
    )  # fmt: skip
    first, second = read_all(reader)
    # Chunks follow SQLite's own (text) order of the cursor; values are normalised to UTC.
    first = first.sort("id")
    assert first.schema["updated_at"] == pl.Datetime("us", "UTC")
    assert first["updated_at"].to_list() == [
        datetime(2026, 1, 1, 10, 0, tzinfo=UTC),
        datetime(2026, 1, 1, 10, 0, tzinfo=UTC),  # 12:00+02:00
        datetime(2026, 1, 1, 10, 30, tzinfo=UTC),
    ]
    assert first.schema["qty"] == pl.Int64 and first.schema["born"] == pl.Date
    # SQLite let a text value into an INTEGER column: that chunk keeps the column as text, and
    # the ingest drift check (not the reader) decides what bronze does with it.
    assert second.schema["qty"] == pl.String and second["qty"].to_list() == ["many"]
    # Offsets and formats are normalised by SQLite for the watermark comparison.
    tail = pl.concat(read_all(reader, since="2026-01-01 10:15:00+00:00"))
    assert sorted(tail["id"]) == [3, 4]


# --- the real ingest path into bronze ----------------------------------------------------------


def test_incremental_ingest_merges_late_updates_into_bronze(
    db: Database, lake_dir: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = db.orders_table()
    db.insert_orders(
        table,
        [{**r, "updated_at": T0 + timedelta(minutes=i % 4)} for i, r in enumerate(orders(10))],
    )
    config = source_config(db, table, monkeypatch, chunk_size=4, overlap_seconds=60)
    first = ingest(config, run="r1")
    assert (first.rows, first.batches, first.quarantined_rows) == (10, 3, 0)
    bronze = lake_dir.read(bronze_table("orders"))
    assert bronze.height == 10 and bronze.schema["updated_at"] == pl.Datetime("us", "UTC")
    watermark = committed_watermark(lake_dir, bronze_table("orders"), "updated_at")
    assert watermark == "2026-10-01 09:33:00.000000+00:00"

    # A late update, a new order, and a row committed late with a timestamp 30 s before the
    # watermark (inside the 60 s overlap window).
    db.execute(
        f"UPDATE {table} SET amount = 999.5, updated_at = :t WHERE order_id = 'o001'",
        [{"t": T0 + timedelta(hours=1)}],
    )
    db.insert_orders(table, orders(1, at=T0 + timedelta(hours=2), prefix="new"))
    db.insert_orders(table, orders(1, at=T0 + timedelta(minutes=2, seconds=30), prefix="late"))
    second = ingest(config, run="r2")
    bronze = lake_dir.read(bronze_table("orders"))
    assert bronze.height == 12
    assert bronze["order_id"].n_unique() == 12
    updated = bronze.filter(pl.col("order_id") == "o001").row(0, named=True)
    assert updated["amount"] == 999.5 and updated["_run_id"] == "r2"
    assert "late000" in bronze["order_id"].to_list()
    assert second.watermark == "2026-10-01 11:30:00.000000+00:00"
    # Only the tail was read (overlap + changes), not the table.
    assert second.rows < 10

    # A rerun with nothing new changes nothing.
    version = lake_dir.version(bronze_table("orders"))
    ingest(config, run="r3")
    assert lake_dir.version(bronze_table("orders")) == version


def test_bronze_records_its_changes_and_an_older_bronze_is_upgraded(
    db: Database, lake_dir: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest writes bronze with the change data feed on; a bronze table from before the feed
    is upgraded by the next ingest, and that ingest's own changes are recorded."""
    table = db.orders_table()
    db.insert_orders(table, orders(3))
    config = source_config(db, table, monkeypatch)
    bronze = bronze_table("orders")
    lake_dir.merge(bronze, pl.DataFrame({"order_id": ["old"]}), keys=["order_id"])
    assert not lake_dir.change_feed_enabled(bronze)  # a bronze table written before the feed

    ingest(config, run="r1")
    assert lake_dir.change_feed_enabled(bronze)
    upgraded = 1  # version 0 created it, version 1 turned the feed on, version 2 is r1's merge
    first = lake_dir.changes(bronze, after_version=upgraded)
    assert sorted(first["order_id"]) == ["o000", "o001", "o002"]
    assert set(first["_change_type"]) == {"insert"}

    read = lake_dir.version(bronze)
    assert read is not None
    db.execute(
        f"UPDATE {table} SET amount = 5.5, updated_at = :t WHERE order_id = 'o002'",
        [{"t": T0 + timedelta(hours=1)}],
    )
    ingest(config, run="r2")
    second = lake_dir.changes(bronze, after_version=read, columns=["order_id", "amount"])
    assert sorted(second.select("order_id", "_change_type").iter_rows()) == [
        ("o002", "update_postimage"),
        ("o002", "update_preimage"),
    ]


def test_schema_drift_new_column_evolves_and_type_misfit_is_quarantined(
    tmp_path: Path, lake_dir: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'drift.db'}"
    engine = sa.create_engine(url, poolclass=NullPool)
    db = Database("sqlite", url, engine)
    table = db.table("order_id TEXT PRIMARY KEY, updated_at TEXT NOT NULL, amount REAL")
    db.execute(
        f"INSERT INTO {table} VALUES ('a', '2026-01-01', 1.5), ('b', '2026-01-02', 2.5), "
        "('c', '2026-01-03', 'n/a'), ('d', '2026-01-03', 4.0), ('', '2026-01-04', 5.0)"
    )
    config = source_config(db, table, monkeypatch, chunk_size=2)
    report = ingest(config, run="r1")
    bronze = lake_dir.read(bronze_table("orders")).sort("order_id")
    assert bronze["order_id"].to_list() == ["a", "b", "d"]
    assert bronze.schema["amount"] == pl.Float64
    assert report.quarantined_rows == 2
    quarantine = lake_dir.read(QUARANTINE).sort("rule")
    assert quarantine.select("rule", "column", "value").rows() == [
        ("missing_primary_key", "order_id", ""),
        ("type_conflict(Float64)", "amount", "n/a"),
    ]
    assert quarantine["source"].unique().to_list() == ["orders"]

    # A column added upstream evolves bronze; old rows read null for it.
    db.execute(f"ALTER TABLE {table} ADD COLUMN channel TEXT")
    db.execute(f"INSERT INTO {table} VALUES ('e', '2026-01-05', 6.0, 'web')")
    report = ingest(config, run="r2")
    bronze = lake_dir.read(bronze_table("orders")).sort("order_id")
    assert bronze["channel"].to_list() == [None, None, None, "web"]
    # The watermark (2026-01-03) re-reads the bad rows; they are quarantined again, but the
    # same bad row (even with the new, null column) is never recorded twice.
    assert report.quarantined_rows == 2
    assert lake_dir.read(QUARANTINE).height == 2
    engine.dispose()


# --- credentials -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["postgresql", "mysql"])
def test_connection_failure_names_source_and_hides_password(family: str) -> None:
    secret = "pw-Sup3r/s3cr3t"  # a fake password that must not leak
    url = f"{family}://app@127.0.0.1:{free_port()}/test"
    reader = SqlTableReader(
        url, source_name="orders", table="orders", primary_key="id", cursor_field="updated_at",
        password=secret, connect_timeout=2,
    )  # fmt: skip
    with pytest.raises(
        SourceError, match=r"source 'orders': cannot connect to .*127\.0\.0\.1"
    ) as e:
        read_all(reader)
    assert secret not in str(e.value) and "***" in str(e.value)
    assert secret not in repr(reader)
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_wrong_password_at_a_real_server_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    # MariaDB checks passwords over TCP (PostgreSQL here trusts every local connection).
    url = sa.make_url(_server("mysql"))
    secret = "wrong-Pa55word"
    reader = SqlTableReader(
        url.set(password=None).render_as_string(hide_password=False),
        source_name="shop_db", table="t", primary_key="id", cursor_field="u", password=secret,
    )  # fmt: skip
    with pytest.raises(SourceError, match=r"source 'shop_db': cannot connect .*Access denied") as e:
        read_all(reader)
    assert secret not in str(e.value)


def test_config_refuses_a_password_in_the_url_without_echoing_it() -> None:
    text = """
sources:
  crm: {kind: files, role: contacts, path: /tmp, format: csv}
  shop:
    kind: sql
    role: orders
    url: postgresql://app:hunter2-secret@db.internal:5432/shop
    table: orders
    primary_key: id
"""
    with pytest.raises(ConfigError, match=r"sources\.shop\.url: contains a password") as e:
        parse_pipeline(text)
    assert "hunter2" not in str(e.value)
    with pytest.raises(ConfigError, match=r"unsupported database URL scheme 'oracle'"):
        parse_pipeline(text.replace("postgresql://app:hunter2-secret@", "oracle://"))
