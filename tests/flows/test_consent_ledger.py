"""The consent ledger in real runs: what it records from the sources, the platforms and an
erasure, that reruns and full refreshes add nothing, that silver and gold point at the deciding
event, and the ``consent show`` / ``consent export`` commands an access request and an audit use.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from flows.cli import main
from flows.ingest import ingest
from flows.pipeline import PipelineReport, pipeline
from flows.transform import transform
from infra.sandbox.mailchimp import subscriber_hash
from tasks.connectors.lake import Lake
from tasks.core.config import load_pipeline
from tasks.core.incremental import live_rows
from tasks.core.tables import (
    AUDIENCE,
    CONSENT_EVENTS,
    CONTACTS,
    PLATFORM_SUPPRESSIONS,
    PLATFORM_SUPPRESSIONS_SCHEMA,
    STAGED,
    table,
)
from tasks.erasure import erase_people
from tasks.resources import pepper
from tests.flows.conftest import CONFIG, Sandbox

pytestmark = pytest.mark.flow

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
STATUS = {"opt-in": "subscribed", "opt-out": "unsubscribed"}


def run_transform(*, full_refresh: bool = False) -> None:
    transform(config_path=CONFIG, as_of=AS_OF, full_refresh=full_refresh)


def run_pipeline(*, full_refresh: bool = False) -> PipelineReport:
    return pipeline(config_path=CONFIG, full_refresh=full_refresh)


def built(lake: Lake) -> dict[str, pl.DataFrame]:
    return {t: lake.read(t).sort(pl.all()) for t in (CONTACTS, AUDIENCE)}


def crm_person(sandbox: Sandbox, email: str) -> str:
    """The CRM id of the record with ``email``."""
    return next(
        str(c["id"])
        for c in sandbox.crm.contacts()
        if (c["properties"]["email"] or "").strip().lower() == email
    )


def test_the_ledger_records_every_source_statement_once_and_decides_silver_and_gold(
    sandbox: Sandbox,
) -> None:
    ingest(config_path=CONFIG)
    run_transform()
    lake = sandbox.lake
    ledger = lake.read(CONSENT_EVENTS)
    staged = live_rows(lake.scan(STAGED["contacts"])).collect()
    stating = staged.filter(
        pl.col("opted_out").fill_null(False) | pl.col("opted_in").fill_null(False)
    )
    assert ledger.height == stating.height > 0  # one event per record that states consent
    assert set(ledger["source"]) == {"crm_contacts"} and set(ledger["channel"]) == {"email"}
    assert (
        ledger["event_id"].is_unique().all() and ledger["supersedes"].null_count() == ledger.height
    )

    # silver carries the decision and the event behind it; gold only opt-ins, with their event.
    contacts = lake.read(CONTACTS)
    decided = contacts.filter(pl.col("consent_status") != "unknown")
    assert contacts.filter(pl.col("consent_status") == "unknown")[
        "consent_event_id"
    ].null_count() == (contacts.height - decided.height)
    pointed = decided.join(ledger, left_on="consent_event_id", right_on="event_id", how="left")
    assert pointed["status"].null_count() == 0  # every pointer resolves
    for row in pointed.iter_rows(named=True):
        assert row["contact_key"] == row["contact_key_right"]
        assert STATUS[row["status"]] == row["consent_status"]
        assert (row["occurred_at"], row["source"]) == (row["consent_at"], row["consent_source"])
    audience = lake.read(AUDIENCE).join(ledger, left_on="consent_event_id", right_on="event_id")
    assert audience.height == lake.count(AUDIENCE) > 0 and set(audience["status"]) == {"opt-in"}

    # A rerun and a full refresh find every statement on record: nothing is committed.
    version = lake.version(CONSENT_EVENTS)
    before = built(lake)
    run_transform()
    run_transform(full_refresh=True)
    assert lake.version(CONSENT_EVENTS) == version
    after = built(lake)
    assert all(after[t].equals(before[t]) for t in before)

    # The CRM withdraws a subscriber's consent: one new event supersedes the opt-in.
    person = (
        decided.filter(pl.col("consent_status") == "subscribed").sort("email").row(0, named=True)
    )
    sandbox.crm.upsert_contact({"hs_email_optout": "true"}, id=crm_person(sandbox, person["email"]))
    ingest(config_path=CONFIG)
    run_transform()
    new = lake.read(CONSENT_EVENTS).join(ledger, on="event_id", how="anti")
    assert new.select("contact_key", "status", "supersedes").rows() == [
        (person["contact_key"], "opt-out", person["consent_event_id"])
    ]
    now = (
        lake.read(CONTACTS)
        .filter(pl.col("contact_key") == person["contact_key"])
        .row(0, named=True)
    )
    assert (now["consent_status"], now["consent_event_id"]) == ("unsubscribed", new["event_id"][0])


def test_a_platform_unsubscribe_becomes_an_opt_out_and_the_next_publish_unsubscribes(
    sandbox: Sandbox,
) -> None:
    run_pipeline()
    lake = sandbox.lake
    member = (
        lake.read(AUDIENCE)
        .filter(pl.col("segment") == "big_spenders")
        .sort("contact_key")
        .row(0, named=True)
    )
    people = lake.read(CONTACTS).height
    ledger = lake.read(CONSENT_EVENTS)
    read_back = pl.DataFrame(
        [
            # Made at Klaviyo: Mailchimp's list holds them subscribed and must be told.
            {"destination": "klaviyo", "platform": "klaviyo", "audience": "kl-at-risk",
             "email": f" {member['email'].upper()} ", "status": "unsubscribed",
             "occurred_at": member["consent_at"] + timedelta(days=1),
             "platform_record_id": "mc-unsub-1", "read_at": datetime.now(UTC), "run_id": "rb"},
            {"destination": "mailchimp", "platform": "mailchimp", "audience": "list-big-spenders",
             "email": "stranger@nowhere.example", "status": "cleaned",
             "occurred_at": member["consent_at"], "platform_record_id": "mc-clean-1",
             "read_at": datetime.now(UTC), "run_id": "rb"},
        ],
        schema=PLATFORM_SUPPRESSIONS_SCHEMA,
    )  # fmt: skip
    entry = table(PLATFORM_SUPPRESSIONS)
    lake.insert_new(PLATFORM_SUPPRESSIONS, read_back, keys=entry.keys, batch_id="read-back-1")

    report = run_pipeline()
    new = lake.read(CONSENT_EVENTS).join(ledger, on="event_id", how="anti")
    assert sorted(new["source_record_id"]) == ["mc-clean-1", "mc-unsub-1"]
    event = new.filter(pl.col("source_record_id") == "mc-unsub-1").row(0, named=True)
    assert (event["contact_key"], event["source"], event["status"]) == (
        member["contact_key"],
        "platform:klaviyo",
        "opt-out",
    )
    assert "unsubscribed" in event["evidence"] and "kl-at-risk" in event["evidence"]
    contact = (
        lake.read(CONTACTS)
        .filter(pl.col("contact_key") == member["contact_key"])
        .row(0, named=True)
    )
    assert (contact["consent_status"], contact["consent_event_id"]) == (
        "unsubscribed",
        event["event_id"],
    )
    assert member["contact_key"] not in set(lake.read(AUDIENCE)["contact_key"])
    assert lake.read(CONTACTS).height == people  # the stranger was recorded, not created
    assert sum(p.unsubscribed for p in report.publish) >= 1
    remote = sandbox.mailchimp.members("list-big-spenders")[subscriber_hash(member["email"])]
    assert remote["status"] == "unsubscribed"

    # Nothing re-subscribes them, and a full refresh appends nothing and rebuilds the same. (The
    # publish just read Mailchimp's record of that unsubscribe back; the next transform records
    # it as one more statement, so the ledger settles one run later.)
    assert sum(p.sent for p in run_pipeline().publish) == 0
    assert sum(p.sent for p in run_pipeline().publish) == 0
    version, before = lake.version(CONSENT_EVENTS), built(lake)
    run_pipeline(full_refresh=True)
    assert lake.version(CONSENT_EVENTS) == version
    assert all(built(lake)[t].equals(before[t]) for t in before)
    assert (
        remote["status"]
        == sandbox.mailchimp.members("list-big-spenders")[subscriber_hash(member["email"])][
            "status"
        ]
    )


def test_an_erasure_leaves_one_ledger_row_and_consent_show_and_export(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ingest(config_path=CONFIG)
    run_transform()
    lake = sandbox.lake
    contacts = lake.read(CONTACTS).sort("email")
    subscribed = contacts.filter(pl.col("consent_status") == "subscribed").row(0, named=True)
    erased = contacts.filter(pl.col("consent_status") == "subscribed").row(1, named=True)

    # An access request: the history and the decision, by contact key; the email never printed.
    assert main(["consent", "show", subscribed["email"].upper()]) == 0
    shown = capsys.readouterr().out
    assert subscribed["contact_key"] in shown and subscribed["email"] not in shown
    assert "opt-in" in shown and "crm_contacts" in shown
    assert "decision: subscribed" in shown and subscribed["consent_event_id"] in shown
    assert main(["consent", "show", "nobody@nowhere.example"]) == 0
    assert "decision: unknown" in capsys.readouterr().out
    assert main(["consent", "show", "not-an-email"]) == 2
    assert "not-an-email" not in capsys.readouterr().err

    secret, version = pepper()
    erase_people(
        lake,
        load_pipeline(CONFIG),
        [erased["email"]],
        pepper=secret,
        version=version,
        run_id="erase-1",
        now=AS_OF,
        log=lambda _: None,
    )
    rows = lake.read(CONSENT_EVENTS).filter(pl.col("contact_key") == erased["contact_key"])
    assert rows.select("source", "status").rows() == [("erasure", "opt-out")]
    ledger_version = lake.version(CONSENT_EVENTS)
    run_transform()
    assert lake.version(CONSENT_EVENTS) == ledger_version  # the transform finds it on record
    assert erased["contact_key"] not in set(lake.read(CONTACTS)["contact_key"])
    assert main(["consent", "show", erased["email"]]) == 0
    assert "decision: unsubscribed" in capsys.readouterr().out

    # An audit: the ledger of a time range, as CSV and as Parquet.
    ledger = lake.read(CONSENT_EVENTS)
    since, until = datetime(2025, 1, 1, tzinfo=UTC), AS_OF
    expected = ledger.filter((pl.col("occurred_at") >= since) & (pl.col("occurred_at") < until))
    assert 0 < expected.height < ledger.height
    out = tmp_path / "audit" / "consent.parquet"
    code = main(
        ["consent", "export", "--since", "2025-01-01", "--until", "2026-11-01T00:00:00+00:00",
         "--format", "parquet", "--out", str(out)]
    )  # fmt: skip
    assert code == 0 and f"wrote {expected.height} consent event(s)" in capsys.readouterr().out
    assert pl.read_parquet(out).sort("event_id").equals(expected.sort("event_id"))
    csv = tmp_path / "consent.csv"
    assert (
        main(["consent", "export", "--by", "recorded_at", "--format", "csv", "--out", str(csv)])
        == 0
    )
    assert pl.read_csv(csv).height == ledger.height
    assert main(["consent", "export", "--since", "yesterday", "--out", str(csv)]) == 2
    assert "--since 'yesterday'" in capsys.readouterr().err
