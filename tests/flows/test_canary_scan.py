"""Canary scan: identifiers and secrets never reach logs, artifacts, events, parameters or errors.

Unique canary values (an email, a first and last name, a phone) are planted in every kind of
source, in rows that land, rows that get quarantined (bad contract values, a missing primary key,
an unparseable event line) and a member the platform rejects with an error quoting the address.
The whole pipeline runs as real Prefect flow runs; then every Python log record created during
the run, every Prefect run log, artifact, event payload, flow-run and task-run name, parameter
and state message, the raised error (if any), and every lake column the catalogue does not list
as an identifier is scanned for the canaries and for the configured secrets: zero occurrences.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterStartTime,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.events.filters import EventFilter, EventOccurredFilter
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

from flows.pipeline import pipeline
from tasks.core.config import load_pipeline
from tasks.core.tables import TABLES, bronze_entry, is_bronze
from tests.flows.conftest import CONFIG, Sandbox

pytestmark = pytest.mark.flow

EMAIL = "qzx.canary.mail@canary-lake.example"
FIRST = "Qzxfirstcanary"
LAST = "Qzxlastcanary"
PHONE_DIGITS = "447700913377"
BAD_EMAIL = "qzx.canary.bad@@canary-lake.example"  # fails the email contract
FAKE_EMAIL = "qzx\u00a7fakecanary@canary-lake.example"  # valid here; Mailchimp: fake
PEPPER = "canary-pepper-secret-5d1e"
SECRETS = ("flow-secret", "flow-key-us1", "flow-hmac-key", PEPPER)
CANARIES = (
    EMAIL,
    "qzx.canary",
    "fakecanary",
    FIRST.lower(),
    LAST.lower(),
    PHONE_DIGITS,
    "7700 913377",
    *SECRETS,
)


HOLDERS = {
    "silver/staged_contacts",
    "silver/staged_enrichment",
    "silver/staged_orders",
    "silver/staged_events",
    "silver/contacts",
    "gold/audience_members",
}
"""Tables that need direct identifiers to do their job (bronze too: what the source said)."""


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """Every log record any logger creates in this process while the test runs."""
    created: list[logging.LogRecord] = []
    factory = logging.getLogRecordFactory()

    def capture(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        created.append(record)
        return record

    logging.setLogRecordFactory(capture)
    try:
        yield created
    finally:
        logging.setLogRecordFactory(factory)


def plant_canaries(sandbox: Sandbox) -> None:
    crm = sandbox.crm
    person = {"firstname": FIRST, "lastname": LAST, "phone": f"+44 7700 {PHONE_DIGITS[-6:]}"}
    optin = {"marketing_opt_in": "true", "marketing_opt_in_at": "2026-08-01T00:00:00Z"}
    crm.upsert_contact({"email": EMAIL, **person, **optin, "hs_email_optout": "false"})
    crm.upsert_contact({"email": BAD_EMAIL, **person, "hs_email_optout": "false"})
    crm.upsert_contact({"email": FAKE_EMAIL, **person, **optin, "hs_email_optout": "false"})
    with sqlite3.connect(sandbox.data_dir / "orders.db") as db:
        stamp = "2026-09-01T10:00:00Z"
        rows = [
            # three good orders (so the canary lands in a segment) and two bad ones
            *[(f"qzx-{n}", EMAIL, "120.0", "EUR", "toys", "paid", stamp, stamp) for n in (1, 2, 3)],
            *[
                (f"qzx-{n}", FAKE_EMAIL, "120.0", "EUR", "toys", "paid", stamp, stamp)
                for n in (4, 5, 6)
            ],
            ("qzx-7", EMAIL, "-5", "EUR", "toys", "paid", stamp, stamp),
            (None, EMAIL, "10", "EUR", "toys", "paid", stamp, stamp),
        ]
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    events = sandbox.data_dir / "drops" / "events" / "events-9999.ndjson"
    good = {
        "event_id": "evt_qzx_1",
        "user_email": EMAIL,
        "anonymous_id": "anon_qzx",
        "event_type": "page_view",
        "occurred_at": "2026-09-02T00:00:00Z",
        "url": f"https://shop.example.com/?email={EMAIL}",
    }
    broken = f'{{"event_id": "evt_qzx_2", "user_email": "{EMAIL}", "name": "{FIRST}'
    events.write_text(json.dumps(good) + "\n" + broken + "\n", encoding="utf-8")
    enrichment = sandbox.data_dir / "drops" / "enrichment" / "enrichment-9999.csv"
    enrichment.write_text(
        "email,company,job_title,city,country,updated_at\n"
        f"{EMAIL},Acme,Buyer,Berlin,DE,2026-09-01T00:00:00Z\n"
        f"{BAD_EMAIL},Acme,Buyer,Berlin,DE,not-a-time\n",
        encoding="utf-8",
    )


def leaks(text: str) -> list[str]:
    lowered = text.lower()
    return [c for c in CANARIES if c.lower() in lowered]


def record_text(record: logging.LogRecord) -> str:
    text = f"{record.name} {record.getMessage()}"
    if record.exc_info:
        text += "".join(traceback.format_exception(*record.exc_info))
    return text


def events_since(since: datetime, *, settle: float = 6.0, timeout: float = 30.0) -> list[str]:
    """Every event payload (resources, related, payload) since ``since``, as JSON.

    Events reach the server's database in batches (every few seconds): read until the count has
    not changed for ``settle`` seconds, within ``timeout``.
    """
    EventsWorker.drain_all(timeout=10)
    window = EventOccurredFilter(since=since, until=datetime.now(UTC) + timedelta(minutes=5))
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        current = read_events(EventFilter(occurred=window))
        if len(current) != len(seen):
            seen, stable_since = current, time.monotonic()
        elif seen and time.monotonic() - stable_since >= settle:
            break
        time.sleep(0.5)
    return seen


def read_events(event_filter: EventFilter) -> list[str]:
    out: list[str] = []
    with get_client(sync_client=True) as client:
        page = client.read_events(event_filter, limit=50)
        for _ in range(1000):
            out.extend(e.model_dump_json() for e in page.events)
            if not page.next_page:
                break
            page = client.read_events_page(str(page.next_page))
    return out


def prefect_texts(since: datetime) -> dict[str, list[str]]:
    """Logs, artifacts, flow/task-run names, parameters and state messages since ``since``."""
    found: dict[str, list[str]] = {"logs": [], "artifacts": [], "flow_runs": [], "task_runs": []}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
            limit=200,
        )
        ids = [r.id for r in runs]
        for run in runs:
            state = run.state.message if run.state else ""
            found["flow_runs"].append(f"{run.name} {json.dumps(run.parameters)} {state}")
        for offset in range(0, 100_000, 200):
            page = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200, offset=offset
            )
            found["logs"].extend(log.message for log in page)
            if len(page) < 200:
                break
        for artifact in client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
        ):
            found["artifacts"].append(f"{artifact.key} {artifact.description} {artifact.data}")
        for offset in range(0, 100_000, 200):
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                limit=200,
                offset=offset,
            )
            for task_run in task_runs:
                state = task_run.state.message if task_run.state else ""
                found["task_runs"].append(f"{task_run.name} {task_run.task_inputs} {state}")
            if len(task_runs) < 200:
                break
    assert len(ids) >= 4, "the pipeline and its ingest, transform and publish runs"
    assert found["logs"] and found["artifacts"] and found["task_runs"], "the scan must see the run"
    return found


def unlisted_columns(sandbox: Sandbox) -> list[str]:
    """The lake's values in columns the catalogue does not list as identifiers, as text."""
    config = load_pipeline(CONFIG)
    lake = sandbox.lake
    texts: list[str] = []
    for name in lake.tables():
        if is_bronze(name) and name not in TABLES:  # a source's (platform read-backs: catalogue)
            source = name.removeprefix("bronze/")
            entry = bronze_entry(source, config.sources[source], write="merge")
        else:
            entry = TABLES[name]
        frame = lake.read(name)
        # Only these tables may hold identifiers at all (whatever the catalogue says).
        allowed = entry.pii if is_bronze(name) or name in HOLDERS else ()
        keep = [c for c in frame.columns if c not in allowed]
        texts.append(f"{name}: " + frame.select(keep).write_ndjson())
    return texts


def test_no_canary_or_secret_leaves_the_tables_that_need_it(
    sandbox: Sandbox, records: list[logging.LogRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_PEPPER", PEPPER)
    plant_canaries(sandbox)
    since = datetime.now(UTC) - timedelta(seconds=1)
    errors: list[str] = []
    # Runs in this suite may not ship their logs to the API; this one must, to be scanned there.
    with temporary_settings({PREFECT_LOGGING_TO_API_ENABLED: True}):
        try:
            report = pipeline(config_path=CONFIG)
            errors.extend(str(e) for p in report.publish for e in p.errors)
        except Exception as exc:  # a failed run must not leak either
            errors.append("".join(traceback.format_exception(exc)))
        APILogWorker.drain_all(timeout=10)

    lake = sandbox.lake
    # The canaries went where they should: landed, quarantined and rejected by the platform.
    contacts = lake.read("silver/contacts")
    assert EMAIL in set(contacts["email"]) and FAKE_EMAIL in set(contacts["email"])
    quarantine = lake.read("ops/quarantine")
    assert quarantine.filter(pl.col("row").str.contains('"qzx-7"', literal=True)).height
    assert {"missing_primary_key", "unparseable_record"} <= set(quarantine["rule"])
    ledger = lake.read("ops/sync_ledger")
    assert ledger.filter(pl.col("error").str.contains("looks fake", literal=True)).height

    scanned: dict[str, list[str]] = {
        "python logging": [record_text(r) for r in records],
        "errors": errors,
        "events": events_since(since),
        "lake columns outside the catalogue's pii": unlisted_columns(sandbox),
        **prefect_texts(since),
    }
    assert scanned["python logging"] and scanned["events"]
    found = {
        where: [(hits, text[:300]) for text in texts if (hits := leaks(text))]
        for where, texts in scanned.items()
    }
    leaked = {where: hits for where, hits in found.items() if hits}
    assert not leaked, json.dumps(leaked, indent=1, ensure_ascii=False)
