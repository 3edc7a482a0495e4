"""Erasure with proof: after ``erase``, no object under the lake root holds the person.

Canary people (names and phones no sample person has) are put into every source: the CRM,
the orders database (one order with a currency the contract quarantines), the event drops and
the enrichment files. The pipeline lands, builds and publishes them; then two of them are
erased, and every object under the lake root (data files decoded and as raw bytes, the Delta
log's JSON commits and checkpoints, change data files) is searched for their email, names and
phone, in any case. The third canary is the control: the scan must still find it.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from flows.erase import erase
from flows.ingest import ingest
from flows.pipeline import pipeline
from flows.transform import transform
from tasks.connectors.lake import Lake, Scratch
from tasks.connectors.lake.scratch import SCRATCH_FOLDER
from tasks.connectors.s3 import s3_client, split_s3_uri
from tasks.core.config import PipelineConfig, load_pipeline
from tasks.core.tables import (
    AUDIENCE,
    CONTACTS,
    ERASURE_LOG,
    ERASURE_REQUESTS,
    QUARANTINE,
    STAGED,
)
from tasks.engine.buckets import cross_bucket_links
from tasks.engine.delta import pinned
from tasks.engine.silver_buckets import SilverBucket, compute_silver_bucket
from tasks.erasure import ErasureError, erase_people
from tasks.resources import pepper
from tests.flows.conftest import CONFIG, Sandbox

pytestmark = pytest.mark.flow

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Canary:
    number: int

    @property
    def email(self) -> str:
        return f"zq{self.number}.canary@erase-proof.example"

    @property
    def first_name(self) -> str:
        return f"Zebulonqx{self.number}"

    @property
    def last_name(self) -> str:
        return f"Quartzvyn{self.number}"

    @property
    def phone_digits(self) -> str:
        return f"15177770{self.number}{self.number}{self.number}"

    def needles(self) -> list[str]:
        """What must not survive, lowercased: the email, each name, the phone's digits."""
        return [self.email, self.first_name.lower(), self.last_name.lower(), self.phone_digits]


CANARIES = [Canary(1), Canary(2), Canary(3)]
ERASED, CONTROL = CANARIES[:2], CANARIES[2]


def plant(sandbox: Sandbox, canary: Canary) -> None:
    """The canary in every source, spelled the way sources spell things (case, blanks)."""
    n = canary.number
    sandbox.crm.upsert_contact(
        {
            "email": f"  ZQ{n}.Canary@Erase-Proof.example ",
            "firstname": canary.first_name,
            "lastname": canary.last_name,
            "phone": f"+49 {canary.phone_digits}",
            "country": "DE",
            "hs_email_optout": "false",
            "marketing_opt_in": "true",
            "marketing_opt_in_at": "2026-01-01T00:00:00Z",
        }
    )
    db = sqlite3.connect(sandbox.data_dir / "orders.db")
    with db:
        for i in range(4):
            db.execute(
                "INSERT INTO orders VALUES (?, ?, '250.00', ?, 'books', 'paid', "
                "'2026-10-20T10:00:00Z', '2026-10-20T10:00:00Z')",
                (f"ord_canary_{n}_{i}", canary.email.upper(), "JPY" if i == 3 else "EUR"),
            )
    db.close()
    events = [
        {
            "event_id": f"evt_canary_{n}",
            "user_email": canary.email.upper(),
            "anonymous_id": f"anon_canary_{n}",
            "event_type": "page_view",
            "occurred_at": "2026-10-30T08:00:00.000Z",
            "url": "https://shop.example.com/canary",
        },
        {  # the same visitor before they gave their email: linked by the anonymous id only
            "event_id": f"evt_canary_{n}_anon",
            "user_email": None,
            "anonymous_id": f"anon_canary_{n}",
            "event_type": "page_view",
            "occurred_at": "2026-10-29T08:00:00.000Z",
            "url": "https://shop.example.com/canary-before",
        },
    ]
    drops = sandbox.data_dir / "drops"
    (drops / "events" / f"events-canary-{n}.ndjson").write_text(
        "".join(json.dumps(e) + "\n" for e in events)
    )
    (drops / "enrichment" / f"enrichment-canary-{n}.csv").write_text(
        "email,company,job_title,city,country,updated_at\n"
        f"{canary.email},Canaryco,CTO,Berlin,DE,2026-10-31T00:00:00Z\n"
    )


# --- the scan -----------------------------------------------------------------------------------
def lake_objects(lake: Lake) -> Iterator[tuple[str, bytes]]:
    """Every object under the lake root: (path, content)."""
    if lake.is_remote:
        bucket, prefix = split_s3_uri(lake.root)
        client = s3_client(lake.storage_options, read_timeout=30.0)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for entry in page.get("Contents", []):
                body = client.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
                yield entry["Key"], bytes(body)
        return
    for folder, _, files in os.walk(lake.root):
        for name in files:
            path = os.path.join(folder, name)
            yield path, Path(path).read_bytes()


def readable_text(path: str, content: bytes) -> str:
    """The object as searchable text: its raw bytes (JSON commits, parquet footers with their
    statistics) plus, for parquet, every decoded value (pages are compressed)."""
    text = content.decode("utf-8", "replace")
    if path.endswith(".parquet"):
        frame = pl.read_parquet(content)
        text += json.dumps(frame.to_dicts(), default=str, ensure_ascii=False)
    return text.lower()


VISITORS = [f"anon_canary_{c.number}" for c in CANARIES]


def texts(lake: Lake) -> Iterator[tuple[str, str]]:
    for path, content in lake_objects(lake):
        yield path, readable_text(path, content)


def occurrences(lake: Lake, canaries: list[Canary]) -> dict[str, list[str]]:
    """Per needle, the objects that hold it."""
    found: dict[str, list[str]] = {}
    for path, content in lake_objects(lake):
        text = readable_text(path, content)
        for canary in canaries:
            for needle in canary.needles():
                if needle in text:
                    found.setdefault(needle, []).append(path)
    return found


# --- the test -------------------------------------------------------------------------------------
@pytest.fixture
def drop_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "erasure-requests"
    folder.mkdir()
    monkeypatch.setenv("AUDIENCE_LAKE_ERASURE_DIR", str(folder))
    return folder


@pytest.mark.usefixtures("lake_env")
def test_erased_people_leave_no_trace_in_any_object_and_do_not_come_back(
    sandbox: Sandbox, drop_dir: Path
) -> None:
    for canary in CANARIES:
        plant(sandbox, canary)
    pipeline(config_path=CONFIG, as_of=AS_OF)
    lake = sandbox.lake

    # The canaries are everywhere the proof looks: bronze, staging, silver, gold, quarantine,
    # the sync ledger, and the Mailchimp list (otherwise a zero count proves nothing).
    before = occurrences(lake, CANARIES)
    assert all(needle in before for c in CANARIES for needle in c.needles()), sorted(before)
    members = lake.read(AUDIENCE).filter(pl.col("email").is_in([c.email for c in CANARIES]))
    assert set(members["email"]) == {c.email for c in CANARIES}
    assert lake.read(QUARANTINE).filter(pl.col("row").str.contains("ord_canary_1_3")).height
    listed = sandbox.mailchimp.members("list-loyal-customers")
    assert {c.email for c in CANARIES} <= {m["email_address"] for m in listed.values()}
    old_version = lake.version(CONTACTS)
    assert old_version is not None
    # A bucketed build killed after computing its bucket left copies of the staged rows.
    killed = killed_bucketed_build(lake)
    held = occurrences(lake, ERASED)[ERASED[0].email]
    assert any(f"{SCRATCH_FOLDER}/{killed.name}/" in path for path in held), held

    # The request arrives as a file drop; the flow answers it and deletes the file.
    (drop_dir / "request-1.txt").write_text(
        "# DSAR 2026-11-01\n" + "".join(f"  {c.email.upper()}\n" for c in ERASED)
    )
    receipts = erase(config_path=CONFIG)
    assert [r.status for r in receipts] == ["erased", "erased"]
    assert not list(drop_dir.iterdir())
    assert all(r.rows_deleted > 0 and r.files_rewritten > 0 for r in receipts)
    assert all("bronze/crm_contacts" in r.tables and CONTACTS in r.tables for r in receipts)
    assert all(r.platforms["mailchimp"].startswith("ok") for r in receipts), receipts

    after = occurrences(lake, CANARIES)
    leaked = {n: p for c in ERASED for n in c.needles() if (p := after.get(n))}
    assert leaked == {}
    # Their visitor ids went with them (events that carried no email included).
    visitors = {anon for _, text in texts(lake) for anon in VISITORS if anon in text}
    assert visitors == {f"anon_canary_{CONTROL.number}"}
    assert all(needle in after for needle in CONTROL.needles())  # the scan still sees

    # Time travel to a version before the erasure no longer exists.
    with pytest.raises(Exception, match=r"(?i)version|log segment"):
        DeltaTable(
            lake.uri(CONTACTS), version=old_version, storage_options=lake.storage_options or None
        )
    # The platforms forgot them too.
    listed = sandbox.mailchimp.members("list-loyal-customers")
    emails = {m["email_address"] for m in listed.values()}
    assert not {c.email for c in ERASED} & emails and CONTROL.email in emails

    # Sources still hold them: a full re-ingest and rebuild do not bring them back.
    ingest(config_path=CONFIG, full_refresh=True)
    transform(config_path=CONFIG, as_of=AS_OF)
    again = occurrences(lake, CANARIES)
    back = {n: p for c in ERASED for n in c.needles() if (p := again.get(n))}
    assert back == {}
    assert CONTROL.email in again

    # The suppression list and receipts hold contact keys, never an email.
    requests = lake.read(ERASURE_REQUESTS)
    assert set(requests["contact_key"]) == {r.contact_key for r in receipts}

    # A second request for the same person is a no-op with a receipt.
    secret, version = pepper()
    second = erase_people(
        lake,
        pipeline_config(),
        [ERASED[0].email],
        pepper=secret,
        version=version,
        run_id="second-request",
        now=AS_OF,
    )
    assert [(r.status, r.request_id) for r in second] == [
        ("already-erased", receipts[0].request_id)
    ]
    assert lake.read(ERASURE_LOG).filter(pl.col("run_id") == "second-request").height == 1


def pipeline_config() -> PipelineConfig:
    return load_pipeline(CONFIG)


def killed_bucketed_build(lake: Lake) -> Scratch:
    """The scratch folder of a silver build in one bucket that was killed before its commit:
    the links and the bucket's rows, computed by the engine's own functions."""
    scratch = lake.scratch("silver-killed")
    versions = {role: lake.version(table) or 0 for role, table in STAGED.items()}
    logs = {role: pinned(lake, table, versions[role]) for role, table in STAGED.items()}
    cross_bucket_links(logs, 1, scratch=scratch).split(logs, scratch)
    rejected = dict.fromkeys(STAGED, 0)
    job = SilverBucket(pipeline_config(), 0, 1, scratch.name, rejected, AS_OF, "killed")
    compute_silver_bucket(lake, job, logger=logging.getLogger("test_erase"))
    return scratch


def test_a_request_that_is_not_an_email_erases_nothing(sandbox: Sandbox) -> None:
    secret, version = pepper()
    with pytest.raises(ErasureError, match=r"entry 2"):
        erase_people(
            sandbox.lake,
            pipeline_config(),
            ["a@example.org", "not an email"],
            pepper=secret,
            version=version,
            run_id="bad",
            now=AS_OF,
        )
    assert not sandbox.lake.exists(ERASURE_REQUESTS)
