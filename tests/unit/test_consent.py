"""The consent ledger's pure logic: statements, record chains, and the decision.

The decision read from the ledger must be the one the contact rows alone lead to (newest
statement wins, opt-out wins ties, no statement is unknown), whatever history of record
versions the ledger saw on the way, and recording the same rows again must add nothing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.core.consent import (
    OPT_IN,
    OPT_OUT,
    WITHDRAWN,
    decide,
    erasure_statements,
    heads,
    history,
    ledger_rows,
    platform_statements,
    source_events,
    source_statements,
)
from tasks.core.entities import resolve_contacts
from tasks.core.normalise import contact_key
from tasks.core.tables import CONSENT_EVENTS_SCHEMA, PLATFORM_SUPPRESSIONS_SCHEMA

PEPPER = b"test-pepper"
T0 = datetime(2026, 10, 1, tzinfo=UTC)
CONTACT_SCHEMA: dict[str, pl.DataType] = {
    "_source": pl.String(), "source_id": pl.String(), "email": pl.String(),
    "opted_in": pl.Boolean(), "opted_in_at": pl.Datetime("us", "UTC"), "opted_out": pl.Boolean(),
    "updated_at": pl.Datetime("us", "UTC"),
}  # fmt: skip


def at(hours: int) -> datetime:
    return T0 + timedelta(hours=hours)


def key(email: str) -> str:
    return str(pl.select(contact_key(pl.lit(email), pepper=PEPPER, version=1)).item())


def contacts(rows: list[dict[str, object]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=CONTACT_SCHEMA)


def record(ledger: pl.DataFrame, rows: pl.DataFrame, *, now: datetime) -> pl.DataFrame:
    """What the transform does for these people: append what their rows say now."""
    statements = source_statements(rows.lazy(), pepper=PEPPER, key_version=1)
    changed = source_events(statements, heads(ledger.lazy()), now=now)
    new = ledger_rows(changed, now=now, run_id="r").collect()
    return pl.concat([ledger, new.join(ledger.select("event_id"), on="event_id", how="anti")])


def empty_ledger() -> pl.DataFrame:
    return pl.DataFrame(schema=CONSENT_EVENTS_SCHEMA)


def derived(rows: pl.DataFrame) -> pl.DataFrame:
    """Consent as the contact rows alone decide it (no ledger)."""
    out = resolve_contacts(rows.lazy(), pepper=PEPPER, key_version=1).collect()
    return out.select("contact_key", "consent_status", "consent_at", "consent_source")


def from_ledger(rows: pl.DataFrame, ledger: pl.DataFrame) -> pl.DataFrame:
    consent = decide(ledger.lazy())
    out = resolve_contacts(rows.lazy(), pepper=PEPPER, key_version=1, consent=consent).collect()
    return out.select("contact_key", "consent_status", "consent_at", "consent_source")


def test_a_record_statement_becomes_one_event_with_its_evidence() -> None:
    rows = contacts(
        [
            {
                "_source": "crm",
                "source_id": "1",
                "email": "a@x.io",
                "opted_in": True,
                "opted_in_at": at(1),
                "opted_out": False,
                "updated_at": at(5),
            },
            {
                "_source": "crm",
                "source_id": "2",
                "email": "b@x.io",
                "opted_in": True,
                "opted_in_at": None,
                "opted_out": True,
                "updated_at": at(6),
            },
            {
                "_source": "crm",
                "source_id": "3",
                "email": "c@x.io",
                "opted_in": None,
                "opted_in_at": None,
                "opted_out": None,
                "updated_at": at(7),
            },
        ]
    )
    ledger = record(empty_ledger(), rows, now=at(100))
    assert ledger.height == 2  # the third record states nothing
    first, second = ledger.sort("source_record_id").iter_rows(named=True)
    assert (first["status"], first["occurred_at"], first["lawful_basis"]) == (
        OPT_IN,
        at(1),
        "consent",
    )
    assert json.loads(first["evidence"]) == {
        "opted_in": True,
        "opted_in_at": "2026-10-01T01:00:00.000000Z",
        "opted_out": False,
        "record_updated_at": "2026-10-01T05:00:00.000000Z",
    }
    assert (second["status"], second["occurred_at"]) == (OPT_OUT, at(6))  # opt-out beats opt-in
    assert first["contact_key"] == key("a@x.io") and first["supersedes"] is None
    assert (first["channel"], first["recorded_at"], first["run_id"]) == ("email", at(100), "r")
    # Recording the same rows again (a rerun, a full refresh) adds nothing.
    assert record(ledger, rows, now=at(200)).equals(ledger)


def test_a_changed_record_supersedes_its_statement_and_a_cleared_one_is_withdrawn() -> None:
    v1 = {"_source": "crm", "source_id": "1", "email": "a@x.io", "opted_in": True,
          "opted_in_at": at(1), "opted_out": False, "updated_at": at(2)}  # fmt: skip
    ledger = record(empty_ledger(), contacts([v1]), now=at(10))
    ledger = record(ledger, contacts([{**v1, "opted_out": True, "updated_at": at(3)}]), now=at(11))
    # Back to the first statement: a new event (it supersedes the opt-out), not the old one.
    ledger = record(ledger, contacts([{**v1, "updated_at": at(4)}]), now=at(12))
    assert ledger.get_column("status").to_list() == [OPT_IN, OPT_OUT, OPT_IN]
    assert ledger.get_column("event_id").n_unique() == 3
    assert ledger["supersedes"].to_list() == [None, ledger["event_id"][0], ledger["event_id"][1]]
    decision = decide(ledger.lazy()).collect().row(0, named=True)
    assert decision["consent_status"] == "subscribed"
    assert decision["consent_event_id"] == ledger["event_id"][2]

    # The flag is cleared: the record no longer says anything, so its opt-in stops counting.
    cleared = {**v1, "opted_in": False, "updated_at": at(5)}
    ledger = record(ledger, contacts([cleared]), now=at(13))
    assert ledger["status"][-1] == WITHDRAWN and ledger["supersedes"][-1] == ledger["event_id"][2]
    assert decide(ledger.lazy()).collect().is_empty()  # unknown: never published
    assert from_ledger(contacts([cleared]), ledger).equals(derived(contacts([cleared])))
    shown = history(ledger.lazy(), key("a@x.io")).collect()
    assert shown.get_column("in_force").to_list() == [False, False, False, False]


def test_a_record_that_moves_to_another_email_withdraws_from_the_old_person() -> None:
    old = {"_source": "crm", "source_id": "1", "email": "old@x.io", "opted_in": True,
           "opted_in_at": at(1), "opted_out": False, "updated_at": at(2)}  # fmt: skip
    moved = {**old, "email": "new@x.io", "updated_at": at(3)}
    ledger = record(empty_ledger(), contacts([old]), now=at(10))
    # The transform hands over the live rows of both people: the record is now new@'s only.
    ledger = record(ledger, contacts([moved]), now=at(11))
    by_key = {
        k: s
        for k, s in decide(ledger.lazy())
        .collect()
        .select("contact_key", "consent_status")
        .iter_rows()
    }
    assert by_key == {key("new@x.io"): "subscribed"}
    assert ledger.filter(pl.col("contact_key") == key("old@x.io"))["status"].to_list() == [
        OPT_IN,
        WITHDRAWN,
    ]


def test_newest_statement_wins_across_sources_and_an_opt_out_wins_a_tie() -> None:
    suppressions = pl.DataFrame(
        [
            {"destination": "newsletter", "platform": "mailchimp", "audience": "list1",
             "email": " A@X.io ", "status": "unsubscribed", "occurred_at": at(9),
             "platform_record_id": "m-1", "read_at": at(20), "run_id": "p"},
            {"destination": "newsletter", "platform": "mailchimp", "audience": "list1",
             "email": "not an email", "status": "bounced", "occurred_at": at(9),
             "platform_record_id": "m-2", "read_at": at(20), "run_id": "p"},
            {"destination": "newsletter", "platform": "mailchimp", "audience": "list2",
             "email": "jane.doe@example.com", "status": "cleaned", "occurred_at": None,
             "platform_record_id": "list2/jane.doe@example.com", "read_at": at(20),
             "run_id": "p"},
        ],
        schema=PLATFORM_SUPPRESSIONS_SCHEMA,
    )  # fmt: skip
    platform = ledger_rows(
        platform_statements(suppressions.lazy(), pepper=PEPPER, key_version=1),
        now=at(21),
        run_id="r",
    ).collect()
    assert platform.height == 2  # an address that is not one names nobody
    quoting = platform.filter(pl.col("contact_key") == key("jane.doe@example.com")).row(
        0, named=True
    )
    assert quoting["source_record_id"] == "list2/j***@e***.com"  # no address in the ledger
    assert quoting["occurred_at"] == at(20)  # the platform gave no time: when it was read
    platform = platform.filter(pl.col("source_record_id") == "m-1")
    row = platform.row(0, named=True)
    assert (row["contact_key"], row["source"], row["source_record_id"]) == (
        key("a@x.io"),
        "platform:newsletter",
        "m-1",
    )
    assert json.loads(row["evidence"]) == {
        "status": "unsubscribed",
        "audience": "list1",
        "platform": "mailchimp",
    }
    opt_in = {"_source": "crm", "source_id": "1", "email": "a@x.io", "opted_in": True,
              "opted_in_at": at(9), "opted_out": False, "updated_at": at(9)}  # fmt: skip
    ledger = pl.concat([record(empty_ledger(), contacts([opt_in]), now=at(10)), platform])
    decision = decide(ledger.lazy()).collect().row(0, named=True)
    assert decision["consent_status"] == "unsubscribed"  # same time: the opt-out wins
    assert decision["consent_event_id"] == row["event_id"]
    # A newer opt-in from the source wins over the platform's older unsubscribe.
    later = record(
        ledger, contacts([{**opt_in, "opted_in_at": at(30), "updated_at": at(30)}]), now=at(31)
    )
    assert decide(later.lazy()).collect()["consent_status"].to_list() == ["subscribed"]
    # The platform statement is not the source's to withdraw.
    gone = record(later, contacts([]), now=at(32))
    assert decide(gone.lazy()).collect()["consent_source"].to_list() == ["platform:newsletter"]


def test_an_erasure_request_is_an_opt_out_of_source_erasure() -> None:
    requests = pl.DataFrame(
        {"request_id": ["er-1"], "contact_key": [key("a@x.io")], "requested_at": [at(40)]}
    )
    rows = ledger_rows(erasure_statements(requests.lazy()), now=at(41), run_id="e").collect()
    again = ledger_rows(erasure_statements(requests.lazy()), now=at(99), run_id="f").collect()
    assert rows["event_id"].equals(again["event_id"])  # deterministic: recorded once
    decision = decide(rows.lazy()).collect().row(0, named=True)
    assert (decision["consent_status"], decision["consent_source"]) == ("unsubscribed", "erasure")


EMAILS = ["a@x.io", "b@x.io", "c@x.io"]
version_rows = st.lists(
    st.fixed_dictionaries(
        {
            "_source": st.sampled_from(["crm", "forms"]),
            "source_id": st.sampled_from(["1", "2", "3", "4"]),
            "email": st.sampled_from(EMAILS),
            "opted_in": st.sampled_from([True, False, None]),
            "opted_in_at": st.sampled_from([None, at(1), at(2)]),
            "opted_out": st.sampled_from([True, False, None]),
            "updated_at": st.sampled_from([at(1), at(2), at(3)]),
        }
    ),
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(snapshots=st.lists(version_rows, min_size=1, max_size=4))
def test_the_ledger_decides_what_the_current_rows_decide_whatever_the_history(
    snapshots: list[list[dict[str, object]]],
) -> None:
    """Each snapshot is the sources' complete content at one run; the ledger sees them in turn
    (an incremental history) and must end with the decision of the last snapshot alone, and a
    full refresh (the last snapshot again) adds nothing."""
    ledger = empty_ledger()
    for run, snapshot in enumerate(snapshots):
        ledger = record(ledger, contacts(snapshot), now=at(100 + run))
    final = contacts(snapshots[-1])
    if final.height:
        expected = derived(final).sort("contact_key")
        assert from_ledger(final, ledger).sort("contact_key").equals(expected)
    assert record(ledger, final, now=at(500)).height == ledger.height
    assert ledger.get_column("event_id").is_unique().all()


def test_consent_evidence_fields_document_a_statement_without_changing_its_identity() -> None:
    plain = {
        "_source": "crm", "source_id": "1", "email": "a@x.io", "opted_in": True,
        "opted_in_at": at(1), "opted_out": False, "updated_at": at(5),
    }  # fmt: skip
    documented = {
        **plain, "lawful_basis": "Consent", "consent_form_id": "form-7",
        "double_opt_in_at": at(2), "consent_wording_version": "v3", "consent_ip": "203.0.113.9",
    }  # fmt: skip
    schema = {
        **CONTACT_SCHEMA, "lawful_basis": pl.String(), "consent_form_id": pl.String(),
        "double_opt_in_at": pl.Datetime("us", "UTC"), "consent_wording_version": pl.String(),
        "consent_ip": pl.String(),
    }  # fmt: skip
    before = record(empty_ledger(), contacts([plain]), now=at(100))
    # Staging carries the new fields as nulls for a source that maps none: nothing changes.
    unmapped = record(empty_ledger(), pl.DataFrame([plain], schema=schema), now=at(100))
    assert unmapped.equals(before)

    ledger = record(empty_ledger(), pl.DataFrame([documented], schema=schema), now=at(100))
    (row,) = ledger.iter_rows(named=True)
    assert row["event_id"] == before["event_id"].item()  # evidence is not identity
    assert row["lawful_basis"] == "Consent"
    ip_hash = pl.select(contact_key(pl.lit("203.0.113.9"), pepper=PEPPER, version=1)).item()
    assert json.loads(row["evidence"]) == {
        "opted_in": True,
        "opted_in_at": "2026-10-01T01:00:00.000000Z",
        "opted_out": False,
        "record_updated_at": "2026-10-01T05:00:00.000000Z",
        "consent_form_id": "form-7",
        "double_opt_in_at": "2026-10-01T02:00:00.000000Z",
        "consent_wording_version": "v3",
        "ip_hash": ip_hash,
    }
    assert "203.0.113.9" not in str(ledger.rows())
    # An existing ledger recorded without the fields: mapping them later records nothing new.
    assert record(before, pl.DataFrame([documented], schema=schema), now=at(200)).equals(before)
    # A lawful basis belongs to an opt-in; an opt-out row keeps none.
    out = record(
        empty_ledger(), pl.DataFrame([{**documented, "opted_out": True}], schema=schema), now=at(9)
    )
    assert out["lawful_basis"].to_list() == [None]
