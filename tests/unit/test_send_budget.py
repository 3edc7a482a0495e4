"""The send-budget planner and the change summary: pure, no network.

The figures the README's send-time table quotes come from :func:`platform_estimate` here (the
adapters' own prices, without opening a connection), so the table cannot drift from the code.
"""

from __future__ import annotations

import doctest
import json
from datetime import UTC, datetime

import httpx
import polars as pl
import pytest

import tasks.core.send_budget as send_budget_module
from tasks.connectors.destinations.hubspot import HubSpot
from tasks.connectors.destinations.klaviyo import Klaviyo
from tasks.connectors.destinations.mailchimp import Mailchimp
from tasks.connectors.destinations.protocol import Destination as Platform
from tasks.core.change_summary import classify_changes, summarise_changes
from tasks.core.config import parse_pipeline
from tasks.core.send_budget import RateWindow, SendEstimate, estimate, format_duration
from tasks.core.sync import (
    LEDGER_SCHEMA,
    field_hash_key,
    ledger_rows,
    plan_sync,
    with_field_hashes,
)
from tasks.errors import ConfigError
from tasks.publish_report import budget_holds, planned_calls
from tasks.reports import AudiencePreview
from tests.unit.test_config import MINIMAL

KEY = field_hash_key(b"test-pepper")
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_doctests() -> None:
    assert doctest.testmod(send_budget_module).failed == 0


def test_a_window_lets_its_first_fill_go_at_once_and_each_further_one_waits_a_window() -> None:
    window = RateWindow(100, 10.0)
    assert [window.minimum_seconds(n) for n in (0, 1, 100, 101, 200, 201)] == [
        0.0, 0.0, 0.0, 10.0, 10.0, 20.0,
    ]  # fmt: skip
    assert format_duration(0) == "0 s" and format_duration(190) == "3 min 10 s"
    assert format_duration(7260) == "2 h 01 min"


def _platforms() -> dict[str, Platform]:
    client = httpx.Client(base_url="http://127.0.0.1:9")
    return {
        "mailchimp": Mailchimp(client),
        "klaviyo": Klaviyo(client, pace=False),
        "hubspot": HubSpot(client, subscription_id=1),
    }


def platform_estimate(kind: str, operation: str, people: int) -> SendEstimate:
    """What sending ``operation`` to ``people`` contacts costs on ``kind`` (default sizes)."""
    platform = _platforms()[kind]
    batch = type(platform).limits.batch_size
    calls = []
    for start in range(0, people, batch):
        calls += platform.planned_calls(operation, min(batch, people - start))  # type: ignore[arg-type]
    return estimate(calls)


def test_100k_contacts_per_platform_the_readme_table() -> None:
    """The README's "what each platform limit means for send time" table."""
    got = {
        (kind, op): (e.calls, format_duration(e.seconds))
        for kind in ("mailchimp", "klaviyo", "hubspot")
        for op in ("upsert", "unsubscribe", "remove")
        if (e := platform_estimate(kind, op, 100_000))
    }
    assert got == {
        ("mailchimp", "upsert"): (200, "19 s"),
        ("mailchimp", "unsubscribe"): (200, "19 s"),
        ("mailchimp", "remove"): (100_000, "2 h 46 min"),
        ("klaviyo", "upsert"): (20, "1 s"),
        ("klaviyo", "unsubscribe"): (1_000, "1 min"),
        ("klaviyo", "remove"): (1_100, "1 min 9 s"),
        ("hubspot", "upsert"): (2_000, "3 min 10 s"),
        ("hubspot", "unsubscribe"): (1_000, "1 min 30 s"),
        ("hubspot", "remove"): (2_000, "3 min 10 s"),
    }


def test_the_planner_follows_the_engine_batches_and_counts_the_field_check() -> None:
    from tasks.core.change_summary import ChangeSummary

    hubspot = _platforms()["hubspot"]
    changes = ChangeSummary(creates=150, updates=60, unsubscribes=5, removals=1)
    counted = estimate(planned_calls(hubspot, changes, 100))
    # 210 upserts in engine batches of 100: 3 upserts + 3 list adds; 1 status write;
    # 1 batch read + 1 list remove; 1 properties read.
    assert dict(counted.by_label) == {
        "properties read": 1, "batch upsert": 3, "list add": 3,
        "status write": 1, "batch read": 1, "list remove": 1,
    }  # fmt: skip
    mailchimp = _platforms()["mailchimp"]
    retag = ChangeSummary(updates=3, retagged=2)
    assert dict(estimate(planned_calls(mailchimp, retag, 500)).by_label) == {
        "merge-field read": 1, "batch subscribe": 1, "tag update": 2,
    }  # fmt: skip


def _members(**people: tuple[str, float]) -> pl.LazyFrame:
    rows = [
        {"contact_key": k, "email": f"{k}@example.com", "payload": json.dumps(
            {"fields": {"FNAME": name, "LTV": ltv}, "tags": []}, separators=(",", ":"))}
        for k, (name, ltv) in people.items()
    ]  # fmt: skip
    return pl.DataFrame(rows).lazy()


def _contacts(*keys: str, out: tuple[str, ...] = ()) -> pl.LazyFrame:
    return pl.DataFrame(
        {
            "contact_key": [*keys, *out],
            "email": [f"{k}@example.com" for k in (*keys, *out)],
            "consent_status": ["subscribed"] * len(keys) + ["unsubscribed"] * len(out),
        }
    ).lazy()


def _sent(plan: pl.DataFrame, key: bytes | None = KEY) -> pl.LazyFrame:
    where = dict(destination="mc", audience="L", segment="s", run_id="r", synced_at=NOW)
    ok = dict.fromkeys(plan["contact_key"])
    batch = with_field_hashes(plan, key) if key is not None else plan
    return ledger_rows(batch, **where, errors=ok).lazy()  # type: ignore[arg-type]


def test_creates_updates_and_the_fields_that_changed_with_masked_samples() -> None:
    first_members = _members(ann=("Ann", 1.0), bob=("Bob", 2.0), cy=("Cy", 3.0))
    contacts = _contacts("ann", "bob", "cy", "dee")
    empty = pl.LazyFrame(schema=LEDGER_SCHEMA)
    first = plan_sync(first_members, contacts, empty, destination="mc", audience="L").collect()
    ledger = _sent(first)
    stored = ledger.collect()
    assert stored["field_hashes"].null_count() == 0
    assert "Ann" not in stored.write_csv() and "1.0" not in stored["field_hashes"][0]

    members = _members(ann=("Ann", 9.0), bob=("Rob", 8.0), cy=("Cy", 3.0), dee=("Dee", 4.0))
    contacts = _contacts("ann", "bob", "dee", out=("cy",))
    plan = plan_sync(members, contacts, ledger, destination="mc", audience="L").collect()
    classified = classify_changes(plan, ledger, destination="mc", audience="L", field_key=KEY)
    summary = summarise_changes(classified, identifier_fields={"FNAME"})
    assert (summary.creates, summary.updates, summary.unsubscribes) == (1, 2, 1)
    assert summary.top_fields == (("LTV", 2), ("FNAME", 1))
    shown = {s.email: (s.change, s.detail) for s in summary.sample}
    assert shown["b***@e***.com"] == ("update", "FNAME=R***, LTV=8.0")
    assert shown["d***@e***.com"] == ("create", "FNAME=D***, LTV=4.0")
    assert shown["c***@e***.com"] == ("unsubscribe", "")
    assert "example.com" not in repr(summary)


def test_a_ledger_without_field_hashes_gives_updates_with_unknown_fields() -> None:
    members = _members(ann=("Ann", 1.0))
    empty = pl.LazyFrame(schema=LEDGER_SCHEMA)
    first = plan_sync(members, _contacts("ann"), empty, destination="mc", audience="L").collect()
    old = _sent(first, key=None).drop("field_hashes")  # written before the column existed
    changed = _members(ann=("Ann", 2.0))
    plan = plan_sync(changed, _contacts("ann"), old, destination="mc", audience="L").collect()
    where = dict(destination="mc", audience="L", field_key=KEY)
    summary = summarise_changes(classify_changes(plan, old, **where))  # type: ignore[arg-type]
    assert (summary.updates, summary.updates_fields_unknown, summary.top_fields) == (1, 1, ())


BUDGETED = MINIMAL.replace(
    "    audiences: {buyers: list-1}",
    "    send_budget: {max_minutes: 1}\n"
    "    audiences:\n      buyers: {list: list-1, send_budget: {max_calls: 3}}\n"
    "      vips: list-2",
).replace("segments:\n", "segments:\n  - name: vips\n    where: order_count > 5\n")


def test_budgets_hold_an_audience_over_its_own_or_its_destination_ceiling() -> None:
    config = parse_pipeline(BUDGETED, env={})
    small = estimate(_platforms()["mailchimp"].planned_calls("upsert", 1_000))  # 2 calls
    big = estimate(_platforms()["mailchimp"].planned_calls("remove", 700))  # 700 calls, 69 s
    vips = AudiencePreview("mc", "vips", "list-2", estimate=small)
    fits = AudiencePreview("mc", "buyers", "list-1", estimate=small)
    assert budget_holds(config, [fits, vips]) == {}
    over = AudiencePreview("mc", "buyers", "list-1", estimate=big)
    holds = budget_holds(config, [over, vips])
    assert "destinations.mc.audiences.buyers.send_budget.max_calls 3" in holds[("mc", "buyers")]
    assert "member archive 700" in holds[("mc", "buyers")]
    # Together over the destination's minute: both wait.
    assert "destinations.mc.send_budget.max_minutes 1" in holds[("mc", "vips")]
    assert "mc (2 audiences) needs 702 calls" in holds[("mc", "vips")]


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        ("{max_calls: 0}", "destinations.mc.send_budget.max_calls: Input should be greater"),
        ("{}", "destinations.mc.send_budget: give max_calls, max_minutes or both"),
        ("{max_call: 5}", "destinations.mc.send_budget.max_call: Extra inputs"),
    ],
)
def test_a_bad_send_budget_names_its_key_path(budget: str, expected: str) -> None:
    text = MINIMAL.replace("    audiences:", f"    send_budget: {budget}\n    audiences:")
    with pytest.raises(ConfigError) as info:
        parse_pipeline(text, env={}, origin="p.yaml")
    assert expected in str(info.value)
