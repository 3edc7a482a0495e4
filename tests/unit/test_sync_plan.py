"""Publish planning rules, one case each (the property test covers their combinations)."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from tasks.core.sync import LEDGER_SCHEMA, ledger_rows, plan_sync, platform_batches, releasable

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _members(*keys: str) -> pl.LazyFrame:
    return pl.LazyFrame(
        {"contact_key": list(keys), "email": [f"{k}@x.io" for k in keys],
         "first_name": ["A"] * len(keys), "last_name": [None] * len(keys)},
        schema={k: pl.String() for k in ("contact_key", "email", "first_name", "last_name")},
    )  # fmt: skip


def _contacts(**consent: str) -> pl.LazyFrame:
    return pl.LazyFrame(
        {"contact_key": list(consent), "email": [f"{k}@x.io" for k in consent],
         "consent_status": list(consent.values())},
    )  # fmt: skip


def _ledger_after(plan: pl.DataFrame, errors: dict[str, str | None] | None) -> pl.LazyFrame:
    rows = ledger_rows(plan, destination="mc", audience="L", segment="s", run_id="r",
                       synced_at=NOW, errors=errors)  # fmt: skip
    return rows.lazy()


def _plan(members: pl.LazyFrame, contacts: pl.LazyFrame, ledger: pl.LazyFrame) -> pl.DataFrame:
    return plan_sync(members, contacts, ledger, destination="mc", audience="L").collect()


def test_a_pending_subscribe_of_someone_who_opted_out_is_unsubscribed() -> None:
    first = _plan(_members("k1"), _contacts(k1="subscribed"), pl.LazyFrame(schema=LEDGER_SCHEMA))
    pending = _ledger_after(first, errors=None)  # sent, then the process died
    assert pending.collect()["status"].to_list() == ["pending"]
    after = _plan(_members(), _contacts(k1="unsubscribed"), pending)
    assert after.select("contact_key", "action").rows() == [("k1", "unsubscribe")]


def test_a_refused_update_of_someone_who_opted_out_is_still_unsubscribed() -> None:
    first = _plan(_members("k1"), _contacts(k1="subscribed"), pl.LazyFrame(schema=LEDGER_SCHEMA))
    refused = _ledger_after(first, errors={"k1": "rate limited"})
    after = _plan(_members(), _contacts(k1="unsubscribed"), refused)
    assert after["action"].to_list() == ["unsubscribe"]


def test_a_stale_audience_row_never_subscribes_someone_not_opted_in() -> None:
    plan = _plan(
        _members("k1", "k2", "k3"),
        _contacts(k1="subscribed", k2="unsubscribed", k3="unknown"),
        pl.LazyFrame(schema=LEDGER_SCHEMA),
    )
    assert plan.select("contact_key", "action").rows() == [("k1", "subscribe")]


def test_holds_release_only_unsubscribes_first_and_dry_runs_nothing() -> None:
    sent = _plan(_members("k1", "k2"), _contacts(k1="subscribed", k2="subscribed"),
                 pl.LazyFrame(schema=LEDGER_SCHEMA))  # fmt: skip
    ledger = _ledger_after(sent, errors={"k1": None, "k2": None})
    plan = _plan(_members("k1", "k3"), _contacts(k1="subscribed", k2="unsubscribed",
                                                 k3="subscribed"), ledger)  # fmt: skip
    assert plan.select("contact_key", "action").rows() == [("k2", "unsubscribe"),
                                                            ("k3", "subscribe")]  # fmt: skip
    held = releasable(plan.lazy(), held=True, dry_run=False).collect()
    assert held["action"].to_list() == ["unsubscribe"]
    assert releasable(plan.lazy(), held=False, dry_run=False).collect().equals(plan)
    assert releasable(plan.lazy(), held=True, dry_run=True).collect().height == 0
    assert releasable(plan.lazy(), held=False, dry_run=True).collect().height == 0
    assert [b.height for b in platform_batches(plan, 1)] == [1, 1]
