"""The little world the fault tests crash into: four real sources, a lake, and a child process.

* ``crm`` — the HubSpot-style CRM stand-in on loopback, read by the declarative REST source's
  ``hubspot_contacts`` preset (merged on ``id``, a batch every 40 rows, incremental on
  ``lastmodifieddate`` with a zero overlap window, so a resume that skipped a row would show);
  the stand-in can hold or fail the N-th search page on cue;
* ``orders`` — an SQLite table whose ``updated_at`` values are shared by runs of 7 rows, read in
  chunks of 25 (keyset on ``(updated_at, order_id)``), merged on ``order_id``;
* ``drops`` — NDJSON file drops, appended exactly once per file;
* ``web_events`` — event batches POSTed to the real webhook receiver (with re-batched and
  verbatim redeliveries), two landed files per commit, inserted once per ``event_id``.

:func:`assert_bronze_matches` compares every bronze table with what the sources hold *now*:
same ids, one row per id, current values — no duplicate and no missing row.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from infra.sandbox.crm import SEARCH_PATH, CrmStandIn
from infra.sandbox.generate import build_crm
from tasks.connectors.lake import Lake
from tasks.connectors.webhook import LocalLanding, WebhookReceiver

ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 90.0
SOURCES = ["orders", "drops", "web_events", "crm"]  # the CRM last: its pagination is the target
CRM_SECRET = "fault-secret"
ORDERS = 300
EVENTS_PER_BATCH = 25
EVENT_STEP = 20  # consecutive batches share 5 events: a re-batched redelivery


class FaultyCrm(CrmStandIn):
    """The CRM stand-in, plus: hold the N-th search page, or start failing at the N-th."""

    def __init__(self, contacts: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(contacts, **kwargs)
        self.searches = 0
        self.hold_at: int | None = None
        self.fail_at: int | None = None
        self.fail_status = 500
        self.fail_count = 0
        self.held = threading.Event()
        self.unhold = threading.Event()
        self._search_lock = threading.Lock()

    def handle(self, request: Any) -> Any:
        if request.path == SEARCH_PATH:
            with self._search_lock:
                self.searches += 1
                number = self.searches
            if number == self.fail_at:
                self.fail_next(self.fail_count, status=self.fail_status)
            if number == self.hold_at:
                self.held.set()
                self.unhold.wait(20)  # bounded: the test kills the client, then releases
        return super().handle(request)


@dataclass
class World:
    """Everything one fault test needs; build with :func:`world`."""

    root: Path
    crm: FaultyCrm
    receiver: WebhookReceiver
    orders_db: Path
    drops: Path
    landing: Path
    config: Path
    lake_uri: str
    pool: ChildPool
    lake_env: dict[str, str] = field(default_factory=dict)
    posted_events: set[str] = field(default_factory=set)
    next_event: int = 0
    next_drop: int = 0

    # --- sources ---------------------------------------------------------------------------

    def post_events(self, batches: int) -> None:
        """POST ``batches`` new batches; each repeats the last 5 events of the one before."""
        with httpx.Client(timeout=10) as client:
            for _ in range(batches):
                start = self.next_event
                events: list[dict[str, Any]] = [
                    {
                        "event_id": f"evt_{n:05d}",
                        "event_type": "page_view",
                        "occurred_at": f"2026-10-01T00:00:{n % 60:02d}Z",
                        "props": {"n": n},
                    }
                    for n in range(start, start + EVENTS_PER_BATCH)
                ]
                response = client.post(self.receiver.url, json=events)
                assert response.status_code == 200, response.text
                self.posted_events.update(e["event_id"] for e in events)
                self.next_event = start + EVENT_STEP
            # A verbatim redelivery of the last body: same file, no new landing.
            again = client.post(self.receiver.url, json=events)
            assert again.json()["duplicate"] is True

    def drop_files(self, count: int) -> None:
        for _ in range(count):
            number = self.next_drop
            rows = [
                {"row_id": f"d{number}-{i:02d}", "email": f"p{i}@example.com", "updated_at": "x"}
                for i in range(30)
            ]
            path = self.drops / f"drop-{number:04d}.ndjson"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            self.next_drop += 1

    def change_sources(self) -> None:
        """What happens upstream between a crash and the rerun: updates and new rows."""
        for contact in self.crm.contacts()[:5]:
            self.crm.upsert_contact(
                {"email": f"changed.{contact['id']}@example.com"}, id=contact["id"]
            )
        for n in range(3):
            self.crm.upsert_contact({"email": f"new{n}@example.com", "firstname": "New"})
        conn = sqlite3.connect(self.orders_db)
        with conn:
            conn.execute(
                "UPDATE orders SET amount = '99.00', updated_at = '2026-10-02T00:00:00Z' "
                "WHERE order_id IN ('o0001', 'o0002', 'o0150', 'o0299', 'o0300')"
            )
            conn.executemany(
                "INSERT INTO orders VALUES (?, ?, '5.00', '2026-10-02T00:00:00Z')",
                [(f"o9{n:03d}", f"late{n}@example.com") for n in range(4)],
            )
        conn.close()
        self.drop_files(1)
        self.post_events(2)

    # --- runs ------------------------------------------------------------------------------

    def child_env(self) -> dict[str, str]:
        """What a run needs in its environment: the lake and the CRM secret."""
        env = {
            "AUDIENCE_LAKE_LAKE_URI": self.lake_uri,
            "AUDIENCE_LAKE_SECRET_FAULT_CRM": CRM_SECRET,
        }
        env.update(self.lake_env)
        return env

    def spawn(
        self, *, fault: dict[str, Any] | None = None, sources: list[str] | None = None
    ) -> Child:
        """A child process running the ingest of ``sources`` with ``fault`` armed."""
        spec = {
            "config": str(self.config),
            "sources": sources or SOURCES,
            "run_id": f"child-{time.monotonic_ns()}",
            "fault": fault or {"kind": "none"},
            "env": self.child_env(),
        }
        return self.pool.take(spec)

    def rerun(self, sources: list[str] | None = None) -> list[dict[str, Any]]:
        """The rerun after a crash, in this process: the same task function, to the end."""
        from prefect.logging import disable_run_logger

        from tasks.core.config import load_pipeline
        from tasks.ingest import ingest_source

        config = load_pipeline(self.config)
        with environment(self.child_env()), disable_run_logger():
            return [
                asdict(
                    ingest_source.fn(
                        name, config.sources[name], run_id="rerun", started_at=datetime.now(UTC)
                    )
                )
                for name in sources or SOURCES
            ]

    def lake(self) -> Lake:
        from tasks.core.settings import load_settings
        from tasks.resources import lake_for

        with environment(self.child_env()):
            return lake_for(load_settings())


class Child:
    """``python -m <module>`` (a fault-test child) with its stdout followed line by line
    (bounded waits)."""

    module = "tests.faults.child"
    timeout_s = CHILD_TIMEOUT_S  # default bound of wait_for() and finish()

    def __init__(self, env: dict[str, str], stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        with stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self._reader = threading.Thread(target=self._follow, daemon=True)
        self._reader.start()

    def start(self, spec: dict[str, Any]) -> None:
        """Hand the warm child its spec (waits until its imports are done)."""
        if "warm" not in self.lines:
            self.wait_for(lambda line: line == "warm")
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.close()

    def _follow(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float | None = None) -> str:
        timeout = self.timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"child ended before the expected line:\n{self.describe()}")
            self.lines.append(line)
            if predicate(line):
                return line
        self.kill()
        raise AssertionError(f"child did not print the expected line in {timeout}s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)
        self._reader.join(timeout=5)
        while True:  # keep what it printed before it died
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)

    def finish(self, timeout: float | None = None) -> int:
        timeout = self.timeout_s if timeout is None else timeout
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"child still running after {timeout}s") from None
        self._reader.join(timeout=5)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return code

    def commits(self, table: str | None = None) -> int:
        return sum(
            1
            for line in self.lines
            if line.startswith("commit ") and (table is None or line.split()[3] == table)
        )

    def describe(self) -> str:
        err = (
            self.stderr_path.read_text(errors="replace")[-3000:]
            if self.stderr_path.exists()
            else ""
        )
        return "\n".join(self.lines[-20:]) + "\n--- stderr ---\n" + err


class ChildPool:
    """Keeps one warm child ready (imports done), so tests do not wait for Python to start."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._env = dict(os.environ)
        self._env.update(
            {
                "PREFECT_HOME": str(root / "prefect"),
                "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1",
            }
        )
        self._count = 0
        self._warm: Child | None = self._spawn()

    def _spawn(self) -> Child:
        self._count += 1
        return Child(self._env, self._root / f"child-{self._count}.err")

    def take(self, spec: dict[str, Any]) -> Child:
        child = self._warm if self._warm and self._warm.proc.poll() is None else self._spawn()
        child.start(spec)
        self._warm = self._spawn()  # warms up while this one works
        return child

    def close(self) -> None:
        if self._warm is not None:
            self._warm.kill()
            self._warm = None


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block, then restore what was there."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def build_world(
    root: Path,
    pool: ChildPool,
    *,
    lake_uri: str | None = None,
    lake_env: dict[str, str] | None = None,
    chunk_size: int = 25,
) -> Iterator[World]:
    """Start the stand-ins, write the sources and ``pipeline.yaml``; yield the :class:`World`."""
    records, _people, _dups = build_crm(random.Random(5), 240)
    crm = FaultyCrm(records, client_id="cid", client_secret=CRM_SECRET)
    landing = root / "landing"
    receiver = WebhookReceiver(LocalLanding(landing), source_name="web_events", allow_unsigned=True)
    orders_db = root / "orders.db"
    _write_orders(orders_db)
    drops = root / "drops"
    drops.mkdir()
    with crm, receiver:
        config = root / "pipeline.yaml"
        config.write_text(
            _pipeline_yaml(crm.url, orders_db, drops, landing, chunk_size), encoding="utf-8"
        )
        built = World(
            root=root,
            crm=crm,
            receiver=receiver,
            orders_db=orders_db,
            drops=drops,
            landing=landing,
            config=config,
            lake_uri=lake_uri or str(root / "lake"),
            pool=pool,
            lake_env=dict(lake_env or {}),
        )
        built.drop_files(4)
        built.post_events(6)
        yield built


def _write_orders(path: Path) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer_email TEXT, amount TEXT, "
            "updated_at TEXT)"
        )
        conn.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, ?)",
            [
                # Runs of 7 rows share a timestamp, so chunk boundaries (25) fall inside ties.
                (
                    f"o{n:04d}",
                    f"c{n % 97}@example.com",
                    f"{n}.50",
                    f"2026-10-01T00:{n // 7:02d}:00Z",
                )
                for n in range(1, ORDERS + 1)
            ],
        )
    conn.close()


def _pipeline_yaml(
    crm_url: str, orders_db: Path, drops: Path, landing: Path, chunk_size: int
) -> str:
    return f"""
version: 1
sources:
  crm:
    kind: rest
    preset: hubspot_contacts
    role: contacts
    base_url: {crm_url}
    auth:
      type: oauth2_client_credentials
      token_url: /oauth/v1/token
      client_id: cid
      client_secret: {{secret: fault_crm}}
    options:
      properties: [email, firstname, lastmodifieddate]
      page_size: 20
      overlap_seconds: 0
      requests_per_second: 1000
    rows_per_batch: 40
    fields: {{source_id: id, updated_at: lastmodifieddate}}
  orders:
    kind: sql
    role: orders
    url: sqlite:///{orders_db}
    table: orders
    primary_key: order_id
    cursor_field: updated_at
    chunk_size: {chunk_size}
    fields: {{email: customer_email}}
  drops:
    kind: files
    role: enrichment
    path: {drops}
    format: ndjson
    pattern: "*.ndjson"
  web_events:
    kind: events
    landing: {landing}
    files_per_commit: 2
"""


# --- the verdict ------------------------------------------------------------------------------


def assert_bronze_matches(world: World, sources: list[str] | None = None) -> None:
    """Every bronze table holds exactly what its source holds now: no duplicate, none missing."""
    lake = world.lake()
    for name in sources or SOURCES:
        _CHECKS[name](world, lake)


def _check_crm(world: World, lake: Lake) -> None:

    crm = {c["id"]: c["properties"] for c in world.crm.contacts() if not c.get("archived")}
    bronze = lake.read("bronze/crm")
    assert bronze.height == bronze["id"].n_unique(), "duplicate contact ids in bronze"
    assert set(bronze["id"]) == set(crm), _diff("crm ids", set(bronze["id"]), set(crm))
    for row in bronze.select("id", "email", "lastmodifieddate").iter_rows(named=True):
        source = crm[row["id"]]
        assert (row["email"], row["lastmodifieddate"]) == (
            source.get("email"),
            source.get("lastmodifieddate"),
        ), f"contact {row['id']} is stale in bronze"


def _check_orders(world: World, lake: Lake) -> None:
    conn = sqlite3.connect(world.orders_db)
    orders = {
        r[0]: (r[1], r[2]) for r in conn.execute("SELECT order_id, amount, updated_at FROM orders")
    }
    conn.close()
    bronze = lake.read("bronze/orders")
    assert bronze.height == bronze["order_id"].n_unique(), "duplicate order ids in bronze"
    assert set(bronze["order_id"]) == set(orders), _diff(
        "order ids", set(bronze["order_id"]), set(orders)
    )
    for row in bronze.select("order_id", "amount", "updated_at").iter_rows(named=True):
        assert (str(row["amount"]), str(row["updated_at"])) == orders[row["order_id"]], row


def _check_drops(world: World, lake: Lake) -> None:
    expected_rows = sorted(
        json.loads(line)["row_id"]
        for path in world.drops.glob("*.ndjson")
        for line in path.read_text().splitlines()
        if line
    )
    bronze = lake.read("bronze/drops")
    assert sorted(bronze["row_id"]) == expected_rows, "file drops landed twice or not at all"


def _check_events(world: World, lake: Lake) -> None:
    bronze = lake.read("bronze/web_events")
    assert bronze.height == bronze["event_id"].n_unique(), "duplicate event ids in bronze"
    assert set(bronze["event_id"]) == world.posted_events, _diff(
        "event ids", set(bronze["event_id"]), world.posted_events
    )


_CHECKS: dict[str, Callable[[World, Lake], None]] = {
    "crm": _check_crm,
    "orders": _check_orders,
    "drops": _check_drops,
    "web_events": _check_events,
}


def _diff(what: str, got: set[str], want: set[str]) -> str:
    return f"{what}: missing {sorted(want - got)[:10]}, unexpected {sorted(got - want)[:10]}"


__all__ = [
    "ROOT",
    "SOURCES",
    "Child",
    "ChildPool",
    "FaultyCrm",
    "World",
    "assert_bronze_matches",
    "build_world",
    "environment",
]
