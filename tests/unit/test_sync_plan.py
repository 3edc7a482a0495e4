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


# --- platform opt-outs (read back by tasks.readback) -----------------------------------------
def _opt_outs(**here: bool) -> pl.LazyFrame:
    return pl.LazyFrame({"contact_key": list(here), "here": list(here.values())},
                        schema={"contact_key": pl.String(), "here": pl.Boolean()})  # fmt: skip


def _plan_with(
    members: pl.LazyFrame,
    contacts: pl.LazyFrame,
    ledger: pl.LazyFrame,
    opt_outs: pl.LazyFrame,
    *,
    mode: str = "upsert",
) -> pl.DataFrame:
    return plan_sync(members, contacts, ledger, destination="mc", audience="L",
                     mode=mode, platform_opt_outs=opt_outs).collect()  # type: ignore[arg-type]  # fmt: skip


def _sent(keys: tuple[str, ...], *, changed: str = "A") -> pl.LazyFrame:
    members = _members(*keys).with_columns(pl.lit(changed).alias("first_name"))
    first = _plan(members, _contacts(**dict.fromkeys(keys, "subscribed")),
                  pl.LazyFrame(schema=LEDGER_SCHEMA))  # fmt: skip
    return _ledger_after(first, dict.fromkeys(keys))


def test_a_member_the_list_reports_opted_out_is_recorded_never_subscribed_or_updated() -> None:
    ledger = _sent(("k1", "k2"))
    members = _members("k1", "k2").with_columns(pl.lit("Changed").alias("first_name"))
    contacts = _contacts(k1="subscribed", k2="subscribed")
    plan = _plan_with(members, contacts, ledger, _opt_outs(k1=True))
    assert plan.select("contact_key", "action").rows() == [
        ("k1", "suppressed"),
        ("k2", "subscribe"),
    ]
    # Recorded as settled: the next run plans nothing for k1, however its fields change.
    recorded = _ledger_after(plan, dict.fromkeys(plan["contact_key"]))
    assert recorded.collect().filter(pl.col("contact_key") == "k1")["status"].to_list() == [
        "suppressed"
    ]
    again = _plan_with(
        members.with_columns(pl.lit("Again").alias("first_name")), contacts, recorded,
        _opt_outs(k1=True),
    )  # fmt: skip
    assert "k1" not in again["contact_key"].to_list()
    # Even when our own consent turns into an opt-out: the list already holds it.
    out = _plan_with(members, _contacts(k1="unsubscribed", k2="subscribed"), recorded,
                     _opt_outs(k1=True))  # fmt: skip
    assert "k1" not in out["contact_key"].to_list()


def test_an_opt_out_at_another_platform_unsubscribes_here() -> None:
    ledger = _sent(("k1",))
    plan = _plan_with(_members("k1"), _contacts(k1="subscribed"), ledger, _opt_outs(k1=False))
    assert plan.select("contact_key", "action").rows() == [("k1", "unsubscribe")]
    # Someone never sent to this list is not subscribed to it either.
    fresh = _plan_with(_members("k2"), _contacts(k2="subscribed"),
                       pl.LazyFrame(schema=LEDGER_SCHEMA), _opt_outs(k2=False))  # fmt: skip
    assert fresh.height == 0


def test_mirror_mode_never_removes_a_suppressed_member() -> None:
    ledger = _sent(("k1", "k2"))
    plan = _plan_with(_members("k2"), _contacts(k1="subscribed", k2="subscribed"), ledger,
                      _opt_outs(k1=True), mode="mirror")  # fmt: skip
    assert plan.select("contact_key", "action").rows() == [("k1", "suppressed")]


def test_someone_we_unsubscribed_is_not_recorded_again_when_the_list_reports_it() -> None:
    ledger = _sent(("k1",))
    out = _plan(_members(), _contacts(k1="unsubscribed"), ledger)
    unsubscribed = _ledger_after(out, {"k1": None})
    plan = _plan_with(_members(), _contacts(k1="unsubscribed"), unsubscribed, _opt_outs(k1=True))
    assert plan.height == 0


def test_a_suppressed_record_goes_out_under_a_hold() -> None:
    plan = _plan_with(_members("k1"), _contacts(k1="subscribed"), _sent(("k1",)),
                      _opt_outs(k1=True))  # fmt: skip
    assert releasable(plan.lazy(), held=True, dry_run=False).collect()["action"].to_list() == [
        "suppressed"
    ]
