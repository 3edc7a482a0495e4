"""The whole pipeline as real Prefect flow runs: end to end, rerun, consent, failures."""

from __future__ import annotations

import httpx
import polars as pl
import pytest

from flows.ingest import ingest
from flows.pipeline import PipelineReport, pipeline
from infra.sandbox.mailchimp import subscriber_hash
from tasks.connectors.lake import Lake
from tasks.core.config import load_pipeline
from tasks.core.mapping import holdout_share
from tasks.errors import SourceError
from tasks.resources import pepper as lake_pepper
from tests.flows.conftest import CONFIG, Sandbox

pytestmark = pytest.mark.flow

# Append-only logs of runs: they grow by design on every run.
RUN_LOGS = {"ops/volume_metrics", "ops/source_runs", "ops/runs"}


def snapshot(lake: Lake) -> dict[str, pl.DataFrame]:
    return {
        table: lake.read(table).sort(pl.all()) for table in lake.tables() if table not in RUN_LOGS
    }


def run(**kwargs: object) -> PipelineReport:
    return pipeline(config_path=CONFIG, **kwargs)  # type: ignore[arg-type]


def assert_holdouts_from_gold_never_sent(
    lake: Lake, sandbox: Sandbox, members: pl.DataFrame, ledger: pl.DataFrame
) -> None:
    """The champions' control group (pipeline.yaml: 10 %), as the transform recorded it in gold,
    is what the publish held out, and none of it reached the platform."""
    recorded = lake.read("gold/audience_holdouts").filter(pl.col("segment") == "champions")
    champions = members.filter(pl.col("segment") == "champions")
    assert set(recorded["contact_key"]) == set(champions["contact_key"]) != set()
    pepper = lake_pepper()[0]
    for contact_key, position in recorded.select("contact_key", "position").iter_rows():
        assert position == holdout_share(contact_key, "champions", pepper)
    held = set(recorded.filter("held_out")["contact_key"])
    recorded_held = ledger.filter(
        (pl.col("segment") == "champions") & (pl.col("status") == "holdout")
    )
    assert set(recorded_held["contact_key"]) == held
    held_emails = set(champions.filter(pl.col("contact_key").is_in(list(held)))["email"])
    on_list = {m["email_address"] for m in sandbox.mailchimp.members("list-champions").values()}
    assert on_list and not on_list & held_emails
    assert on_list == set(champions["email"]) - held_emails


def sent(report: PipelineReport) -> int:
    return sum(p.sent for p in report.publish)


@pytest.mark.usefixtures("lake_env")
def test_pipeline_end_to_end_then_rerun_changes_nothing(sandbox: Sandbox, lake_env: str) -> None:
    first = run()
    lake = sandbox.lake
    assert set(lake.tables()) >= {
        "bronze/crm_contacts", "bronze/orders", "bronze/web_events", "bronze/enrichment",
        "silver/contacts", "silver/orders", "silver/events",
        "gold/customer_features", "gold/audience_members", "gold/audience_holdouts",
        "ops/quarantine", "ops/volume_metrics", "ops/sync_ledger", "ops/sync_history",
    }  # fmt: skip
    # Every silver table balances: nothing silently dropped.
    assert all(t.balanced for t in first.transform.tables), first.transform.tables
    assert lake.read("ops/quarantine").height > 0  # the sample data is messy on purpose
    # The audience is partitioned by segment on storage.
    members = lake.read("gold/audience_members")
    partitions = {p["segment"] for p in lake.partitions("gold/audience_members")}
    assert partitions == {s for s, n in first.transform.audience_sizes.items() if n}
    assert partitions == set(members["segment"])
    # What was published is exactly the audiences (each to every destination that publishes
    # its segment, less the holdouts), and only opted-in people.
    config = load_pipeline(CONFIG, env={})
    sizes = dict(members.group_by("segment").len().iter_rows())
    due = sum(sizes.get(s, 0) for d in config.destinations.values() for s in d.audiences)
    held_out = sum(p.held_out for p in first.publish)
    assert sent(first) + held_out == due > 0
    contacts = lake.read("silver/contacts")
    subscribed = set(contacts.filter(pl.col("consent_status") == "subscribed")["email"])
    for segment, list_id in [("loyal_customers", "list-loyal-customers")]:
        emails = {m["email_address"] for m in sandbox.mailchimp.members(list_id).values()}
        expected = set(members.filter(pl.col("segment") == segment)["email"])
        assert emails == expected
        assert emails <= subscribed
    ledger = lake.read("ops/sync_ledger")
    assert ledger.height == due and set(ledger["status"]) <= {"ok", "holdout"}
    assert_holdouts_from_gold_never_sent(lake, sandbox, members, ledger)

    before = snapshot(lake)
    second = run()
    assert sent(second) == 0
    after = snapshot(lake)
    assert before.keys() == after.keys()
    for table in before:
        assert before[table].equals(after[table]), f"{table} changed on an unchanged rerun"
    metrics = lake.read("ops/volume_metrics")
    assert metrics["run_id"].n_unique() == 2


def test_opt_out_in_the_crm_unsubscribes_in_mailchimp(sandbox: Sandbox) -> None:
    run()
    lake = sandbox.lake
    member = (
        lake.read("gold/audience_members")
        .filter(pl.col("segment") == "big_spenders")
        .row(0, named=True)
    )
    person = next(
        c for c in sandbox.crm.contacts()
        if (c["properties"]["email"] or "").strip().lower() == member["email"]
    )  # fmt: skip
    sandbox.crm.upsert_contact({"hs_email_optout": "true"}, id=person["id"])
    report = run()
    assert sum(p.unsubscribed for p in report.publish) >= 1
    remote = sandbox.mailchimp.members("list-big-spenders")[subscriber_hash(member["email"])]
    assert remote["status"] == "unsubscribed"
    audience = lake.read("gold/audience_members")
    assert member["contact_key"] not in audience["contact_key"].to_list()
    ledger = lake.read("ops/sync_ledger").filter(pl.col("contact_key") == member["contact_key"])
    assert set(ledger["action"]) == {"unsubscribe"}
    assert sent(run()) == 0  # and it is not sent again


def test_platform_refusals_are_recorded_and_retried_next_run(sandbox: Sandbox) -> None:
    run(dry_run=True)
    lake = sandbox.lake
    assert not lake.exists("ops/sync_ledger")  # a dry run plans but sends nothing
    members = lake.read("gold/audience_members").filter(pl.col("segment") == "loyal_customers")
    unsubscribed, forgotten = members["email"][0], members["email"][1]
    base = f"{sandbox.mailchimp.url}/3.0/lists/list-loyal-customers/members"
    auth = ("any", "flow-key-us1")
    # One person is already on the list and unsubscribed there (in Mailchimp itself): the
    # publish reads that back first and sends them nothing. Another was permanently deleted
    # from the list: Mailchimp refuses to re-add them, whatever the CRM says.
    for email, status in ((unsubscribed, "unsubscribed"), (forgotten, "subscribed")):
        created = httpx.post(base, json={"email_address": email, "status": status}, auth=auth)
        assert created.status_code == 200, created.text
    deleted = httpx.post(f"{base}/{subscriber_hash(forgotten)}/actions/delete-permanent", auth=auth)
    assert deleted.status_code == 204, deleted.text
    first = run()
    loyal = next(p for p in first.publish if p.segment == "loyal_customers")
    assert loyal.suppressed == 1 and loyal.failed == 1, loyal
    assert loyal.sent == loyal.members - 2
    ledger = lake.read("ops/sync_ledger").filter(pl.col("status") == "error")
    assert ledger.height == 1 and "permanently deleted" in (ledger["error"][0] or "").lower()
    again = run()
    assert [p.planned for p in again.publish if p.segment == "loyal_customers"] == [1]


def test_source_returning_garbage_fails_clearly_and_commits_nothing(sandbox: Sandbox) -> None:
    sandbox.crm.fail_next(1, status=200, body=b"<html><body>Service Unavailable</body></html>")
    with pytest.raises(SourceError, match="source 'crm_contacts'.*non-JSON"):
        ingest(config_path=CONFIG, sources=["crm_contacts"])
    assert not sandbox.lake.exists("bronze/crm_contacts")
