"""Segment predicates: a closed expression language; nothing else ever reaches polars' SQL layer.

Polars' SQL runs table functions (``read_csv``, ``read_parquet``, ...) while it merely *builds*
an expression, so a predicate handed to it verbatim could read local files into an error message
and send HTTP requests (SSRF) at config load. These tests use a real file and a real HTTP server
on 127.0.0.1 that records every request.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tasks.core.config import FEATURE_COLUMNS, Segment, load_pipeline, parse_pipeline
from tasks.core.predicates import (
    MAX_DEPTH,
    PredicateError,
    compile_predicate,
    parse_predicate,
    predicate_columns,
)
from tasks.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

BASE = """
sources:
  crm:
    kind: sql
    role: contacts
    url: sqlite:///x.db
    table: people
    primary_key: id
    fields: {source_id: id}
segments:
"""

CANARY = "canary-line-7f3a9c-do-not-echo"


# The recording server runs in its own process: polars holds the GIL while it fetches, so a
# server thread in this process could never answer (the old code then hung instead of failing).
_RECORDER = r"""
import http.server, sys
log = open(sys.argv[1], "a", buffering=1)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        log.write(f"{self.command} {self.path}\n")
        body = b"a,b\n1,2\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
    do_HEAD = do_GET
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 (own process) logging every request line to a file."""
    log = tmp_path / "requests.log"
    log.touch()
    process = subprocess.Popen(
        [sys.executable, "-c", _RECORDER, str(log)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=10) as reply:
            assert reply.status == 200
        assert log.read_text() == "GET /ready\n"  # the server records what reaches it
        log.write_text("")
        yield f"http://127.0.0.1:{port}", log
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def config_with(where: str) -> str:
    escaped = where.replace("'", "''")
    return BASE + f"  - name: vip\n    where: '{escaped}'\n"


def test_a_table_function_reading_a_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    secret_file = tmp_path / "hostname"
    secret_file.write_text(f"{CANARY}\nsecond line\n")
    for where in (
        # polars used to name the CSV's columns, i.e. the file's first line, in its error
        f"(SELECT column_1 FROM read_csv('{secret_file}')) = 'x'",
        f"read_csv('{secret_file}') IS NOT NULL",
        f"order_count > 0 AND read_csv('{secret_file}') IS NOT NULL",
        f"order_count IN (SELECT * FROM read_csv('{secret_file}'))",
    ):
        with pytest.raises(ConfigError) as info:
            parse_pipeline(config_with(where), env={}, origin="p.yaml")
        message = str(info.value)
        assert CANARY not in message and "second line" not in message
        assert message.startswith("p.yaml: segments.0: segment 'vip': invalid predicate")


def test_table_functions_send_no_request_at_load(recorder: tuple[str, Path]) -> None:
    url, log = recorder
    predicates = (
        f"read_csv('{url}/a.csv') IS NOT NULL",
        f"read_parquet('{url}/b.parquet') IS NOT NULL",
        f"read_json('{url}/c.json') IS NOT NULL",
        f"country IN (SELECT a FROM read_csv('{url}/d.csv'))",
        f"EXISTS (SELECT 1 FROM read_csv('{url}/e.csv'))",
    )
    for where in predicates:
        with pytest.raises(ConfigError, match=r"segment 'vip': "):
            parse_pipeline(config_with(where), env={}, origin="p.yaml")
    assert log.read_text() == ""  # not one request reached the server
    for where in predicates:
        with pytest.raises(ConfigError, match=r"segments\.0: segment 'vip': invalid predicate"):
            parse_pipeline(config_with(where), env={}, origin="p.yaml")
        with pytest.raises(ValueError, match=r"segment 'direct': invalid predicate"):
            Segment(name="direct", where=where)  # the model itself refuses, not only the loader
    assert log.read_text() == ""


def test_only_the_allowed_language_reaches_polars() -> None:
    refused = {
        "read_csv('/etc/hostname') IS NOT NULL": "function read_csv() at position 1",
        "upper(country) = 'DE' OR sqrt(order_count) > 1": "function sqrt() at position 26",
        "order_count > 1; SELECT 1": "unexpected character ';'",
        "order_count > 1 -- hidden": "comments are not allowed",
        "order_count > 1 /* hidden */": "comments are not allowed",
        "order_count::varchar = '1'": "unexpected character ':'",
        "country IN (country)": "IN takes a list of literals",
        "country = 'a\\b'": "unexpected character",
        "country LIKE country": "LIKE needs a 'string' pattern",
        "NOT": "expected a column, a literal or '('",
        "": "empty",
        "(" * (MAX_DEPTH + 1) + "order_count > 1" + ")" * (MAX_DEPTH + 1): "nested deeper",
        "a>1 AND " * 160 + "TRUE": "more than 600 tokens",
        "order_count > 1 AND " * 200 + "TRUE": "longer than 4000 characters",
    }
    for where, reason in refused.items():
        with pytest.raises(PredicateError, match=re.escape(reason)):
            compile_predicate(where, FEATURE_COLUMNS)


PREDICATES = [
    # every predicate in pipeline.yaml and the tests, plus each allowed construct
    "order_count >= 3",
    "lifetime_value > 500",
    "order_count = 0 AND events_90d >= 3",
    "r_score >= 4 AND f_score >= 4 AND m_score >= 4",
    "r_score <= 2 AND f_score >= 3",
    "first_order_at IS NOT NULL AND recency_days <= 30 AND order_count = 1",
    "lifetime_value > 500 AND country = 'DE'",
    "rfm_score IN ('555', '554')",
    "favourite_category = 'books' OR events_30d > 0",
    "days_since_last_activity > 90",
    "lifetime_value > 1e9",
    "order_count >= 5 AND lifetime_value > 500",
    "NOT (order_count > 1) OR country IS NULL",
    "order_count BETWEEN 1 AND 3 AND recency_days NOT BETWEEN 10 AND 20",
    "country NOT IN ('DE', 'AT') AND order_count NOT IN (1, -2)",
    "country LIKE 'D%' OR favourite_category ILIKE 'b_oks' OR country NOT LIKE '%E'",
    "lifetime_value / order_count > 100 AND order_count % 2 = 0",
    "-recency_days + 2 * events_30d >= 10 - 1",
    "order_count <> 1 AND order_count != 2 AND order_count == order_count",
    "ABS(recency_days - 30) < 5 AND COALESCE(events_90d, 0) = 0",
    "LOWER(country) = 'de' OR UPPER(favourite_category) = 'BOOKS' OR LENGTH(rfm_score) = 3",
    "ROUND(lifetime_value, 1) >= 10.5",
    '"order_count" > 1 AND last_order_at IS NOT NULL',
    "last_activity_at IS NULL OR (events_30d > 0 AND (r_score IS NOT NULL))",
    "country = 'it''s'",
]


def features_frame(n: int = 400) -> pl.LazyFrame:
    """Deterministic features with nulls sprinkled in every column."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    countries = ["DE", "AT", "FR", "it's", "de", None]
    categories = ["books", "BOOKS", "boots", None]

    def maybe(i: int, value: object) -> object:
        return None if i % 7 == 3 else value

    data = {
        "contact_key": [f"v1:{i:064x}" for i in range(n)],
        "country": [countries[i % len(countries)] for i in range(n)],
        "order_count": [maybe(i, i % 9) for i in range(n)],
        "lifetime_value": [maybe(i, (i * 37 % 1000) + 0.55) for i in range(n)],
        "avg_order_value": [maybe(i, float(i % 50)) for i in range(n)],
        "first_order_at": [maybe(i, start + timedelta(days=i % 300)) for i in range(n)],
        "last_order_at": [maybe(i + 1, start + timedelta(days=i % 330)) for i in range(n)],
        "recency_days": [maybe(i + 2, i % 60) for i in range(n)],
        "frequency": [maybe(i, i % 5) for i in range(n)],
        "monetary": [maybe(i, float(i % 700)) for i in range(n)],
        "r_score": [maybe(i + 3, i % 5 + 1) for i in range(n)],
        "f_score": [maybe(i + 4, (i // 5) % 5 + 1) for i in range(n)],
        "m_score": [maybe(i + 5, (i // 25) % 5 + 1) for i in range(n)],
        "rfm_score": [maybe(i, f"{i % 5 + 1}{i % 4 + 2}{i % 3 + 3}") for i in range(n)],
        "favourite_category": [categories[i % len(categories)] for i in range(n)],
        "events_30d": [maybe(i + 6, i % 4) for i in range(n)],
        "events_90d": [maybe(i, i % 11) for i in range(n)],
        "last_activity_at": [maybe(i + 2, start + timedelta(hours=i)) for i in range(n)],
        "days_since_last_activity": [maybe(i, i % 200) for i in range(n)],
    }
    return pl.DataFrame(data, schema=FEATURE_COLUMNS).lazy()


@pytest.mark.parametrize("where", PREDICATES)
def test_allowed_predicates_select_exactly_what_polars_sql_selected(where: str) -> None:
    # These predicates are harmless, so polars may parse the user's text directly here: the
    # reference for "results unchanged" by the parse-and-render step.
    frame = features_frame()
    expected = frame.select(pl.sql_expr(where).alias("m")).collect()
    actual = frame.select(compile_predicate(where, FEATURE_COLUMNS).alias("m")).collect()
    assert_frame_equal(actual, expected)
    assert expected["m"].drop_nulls().n_unique() >= 1
    assert Segment(name="s", where=where).expr().meta.root_names()  # a valid segment


def test_repository_segments_keep_their_members() -> None:
    config = load_pipeline(ROOT / "pipeline.yaml", env={})
    frame = features_frame()
    for segment in config.segments:
        expected = frame.select(pl.sql_expr(segment.where).alias("m")).collect()
        actual = frame.select(segment.expr().alias("m")).collect()
        assert_frame_equal(actual, expected)
        assert actual["m"].sum() > 0, segment.name  # the comparison is not vacuous


def test_predicate_columns_are_read_without_evaluating() -> None:
    assert predicate_columns("order_count > 1 AND COALESCE(country, 'x') = 'DE'") == {
        "order_count",
        "country",
    }
    assert parse_predicate("a IS NOT TRUE") is not None
    with pytest.raises(PredicateError, match="unknown column"):
        compile_predicate("shoe_size > 42", FEATURE_COLUMNS)


def test_nothing_else_hands_text_to_polars_sql() -> None:
    """The parser is the only door: no other module may call polars' SQL entry points."""
    pattern = re.compile(r"\bsql_expr\s*\(|\bSQLContext\b|\bpl\.sql\s*\(|\.sql\s*\(")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("tasks", "flows", "infra")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != ROOT / "tasks" / "core" / "predicates.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
