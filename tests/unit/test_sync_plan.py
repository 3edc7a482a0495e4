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


def _mapped(values: dict[str, str], holdout: frozenset[str] = frozenset()) -> pl.LazyFrame:
    """Members with a mapped payload (what the engine builds from the audience's fields)."""
    keys = list(values)
    return pl.LazyFrame(
        {"contact_key": keys, "email": [f"{k}@x.io" for k in keys],
         "payload": [f'{{"fields":{{"LTV":{values[k]}}},"tags":[]}}' for k in keys],
         "holdout": [k in holdout for k in keys]},
    )  # fmt: skip


def _mplan(members: pl.LazyFrame, contacts: pl.LazyFrame, ledger: pl.LazyFrame, mode: str
           ) -> pl.DataFrame:  # fmt: skip
    return plan_sync(members, contacts, ledger, destination="mc", audience="L",
                     mode=mode).collect()  # type: ignore[arg-type]  # fmt: skip


def test_a_changed_mapped_field_is_an_update_and_an_unchanged_one_sends_nothing() -> None:
    contacts = _contacts(k1="subscribed", k2="subscribed")
    empty = pl.LazyFrame(schema=LEDGER_SCHEMA)
    first = _mplan(_mapped({"k1": "1.5", "k2": "2.5"}), contacts, empty, "upsert")
    ledger = _ledger_after(first, dict.fromkeys(first["contact_key"]))
    changed = _mplan(_mapped({"k1": "1.5", "k2": "9.0"}), contacts, ledger, "upsert")
    assert changed.select("contact_key", "action").rows() == [("k2", "subscribe")]


def test_mirror_removes_leavers_upsert_keeps_them_and_opt_outs_are_unsubscribed() -> None:
    contacts = _contacts(k1="subscribed", k2="subscribed", k3="subscribed")
    first = _mplan(_mapped({"k1": "1", "k2": "2", "k3": "3"}), contacts,
                   pl.LazyFrame(schema=LEDGER_SCHEMA), "mirror")  # fmt: skip
    ledger = _ledger_after(first, dict.fromkeys(first["contact_key"]))
    later = _contacts(k1="subscribed", k2="subscribed", k3="unsubscribed")
    mirror = _mplan(_mapped({"k1": "1"}), later, ledger, "mirror")
    assert mirror.select("contact_key", "action").rows() == [
        ("k3", "unsubscribe"),
        ("k2", "remove"),
    ]
    upsert = _mplan(_mapped({"k1": "1"}), later, ledger, "upsert")
    assert upsert.select("contact_key", "action").rows() == [("k3", "unsubscribe")]
    # A removal is recorded; the contact is not removed again, and comes back when it returns.
    removed = _ledger_after(mirror, dict.fromkeys(mirror["contact_key"]))
    merged = pl.concat([ledger.collect().filter(pl.col("contact_key") == "k1"), removed.collect()])
    assert _mplan(_mapped({"k1": "1"}), later, merged.lazy(), "mirror").height == 0
    back = _mplan(_mapped({"k1": "1", "k2": "2"}), later, merged.lazy(), "mirror")
    assert back.select("contact_key", "action").rows() == [("k2", "subscribe")]


def test_holdout_members_are_recorded_once_and_never_subscribed() -> None:
    contacts = _contacts(k1="subscribed", k2="subscribed")
    members = _mapped({"k1": "1", "k2": "2"}, holdout=frozenset({"k2"}))
    first = _mplan(members, contacts, pl.LazyFrame(schema=LEDGER_SCHEMA), "mirror")
    assert first.select("contact_key", "action").rows() == [("k1", "subscribe"), ("k2", "holdout")]
    ledger = _ledger_after(first, dict.fromkeys(first["contact_key"]))
    assert ledger.collect()["status"].to_list() == ["ok", "holdout"]
    assert _mplan(members, contacts, ledger, "mirror").height == 0
    batches = [b["action"].unique().to_list() for b in platform_batches(first, 10)]
    assert batches == [["subscribe"], ["holdout"]]  # one action per platform call
