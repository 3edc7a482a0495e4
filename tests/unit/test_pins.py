"""Pure pieces of pinned publishes and gold holdouts: version options, opt-outs that outrank a
pin, and holdout positions that do not depend on who else is in the audience."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from tasks.core.config import load_pipeline
from tasks.core.mapping import holdout_share
from tasks.core.pins import (
    latest_opt_outs,
    newest_versions,
    parse_version_pins,
    suppressed_keys,
    versions_json,
    with_newer_opt_outs,
)
from tasks.core.sync import OPT_IN, OPT_OUT
from tasks.core.tables import HOLDOUTS_SCHEMA
from tasks.engine.holdouts import holdout_rows, holdout_shares

PEPPER = b"unit-pepper"
T0 = datetime(2026, 11, 1, tzinfo=UTC)
T1 = datetime(2026, 11, 2, tzinfo=UTC)
T2 = datetime(2026, 11, 3, tzinfo=UTC)


def test_version_options_parse_and_bad_ones_are_named() -> None:
    assert parse_version_pins(["gold/audience_members=12", " gold/customer_features = 3"]) == {
        "gold/audience_members": 12,
        "gold/customer_features": 3,
    }
    for bad in ("gold/audience_members", "=3", "gold/audience_members=-1", "x=1.5"):
        with pytest.raises(ValueError, match="TABLE=VERSION") as info:
            parse_version_pins([bad])
        assert repr(bad) in str(info.value)


def test_newest_versions_and_their_text_are_order_independent() -> None:
    got = newest_versions([{"a": [3, 1]}, {"a": 2, "b": [7]}, {"c": []}])
    assert got == {"a": 3, "b": 7}
    assert versions_json({"b": 1, "a": 2}) == versions_json({"a": 2, "b": 1}) == '{"a": 2, "b": 1}'


def contacts() -> pl.LazyFrame:
    return pl.LazyFrame(
        {
            "contact_key": ["k1", "k2", "k3", "k4"],
            "email": ["a@x.io", "b@x.io", "c@x.io", "d@x.io"],
            "consent_status": [OPT_IN, OPT_IN, OPT_IN, OPT_OUT],
            "consent_at": [T1, T1, None, T0],
        }
    )


def test_an_opt_out_newer_than_silver_wins_an_older_one_does_not() -> None:
    opt_outs = pl.LazyFrame(
        {"contact_key": ["k1", "k2", "k3"], "occurred_at": [T2, T0, T0]},
        schema={"contact_key": pl.String, "occurred_at": pl.Datetime("us", "UTC")},
    )
    got = dict(with_newer_opt_outs(contacts(), opt_outs).select("contact_key", "consent_status")
               .collect().iter_rows())  # fmt: skip
    # k1: opted out after her opt-in; k2: opted in again since; k3: no consent time, so the
    # opt-out wins; k4 stays out.
    assert got == {"k1": OPT_OUT, "k2": OPT_IN, "k3": OPT_OUT, "k4": OPT_OUT}


def test_the_latest_consent_event_decides_and_suppressions_match_by_normalised_email() -> None:
    events = pl.LazyFrame(
        {
            "contact_key": ["k1", "k1", "k2", "k2", "k3"],
            "channel": ["email"] * 4 + ["sms"],
            "status": ["opt-in", "opt-out", "opt-out", "opt-in", "opt-out"],
            "occurred_at": [T0, T2, T0, T1, T2],
        }
    )
    assert latest_opt_outs(events).collect().rows() == [("k1", T2)]
    suppressions = pl.LazyFrame(
        {"email": ["  B@X.IO ", "nobody@x.io", "b@x.io"], "occurred_at": [T1, T2, T2]}
    )
    assert suppressed_keys(suppressions, contacts()).collect().rows() == [("k2", T2)]


def test_holdout_positions_do_not_depend_on_who_else_is_in_the_audience() -> None:
    shares = {"champions": 0.3}
    small = pl.LazyFrame(
        {"segment": ["champions"] * 20, "contact_key": [f"k{i}" for i in range(20)]}
    )
    big = pl.concat(
        [small, pl.LazyFrame({"segment": ["champions"] * 200,
                              "contact_key": [f"new{i}" for i in range(200)]})]
    )  # fmt: skip
    none = pl.LazyFrame(schema=HOLDOUTS_SCHEMA)
    before = holdout_rows(small, none, shares, PEPPER).collect()
    after = holdout_rows(big, none, shares, PEPPER).collect()
    assert 0 < before["held_out"].sum() < 20
    kept = after.filter(pl.col("contact_key").is_in(before["contact_key"].implode()))
    assert kept.sort("contact_key").equals(before.sort("contact_key"))
    # A known position is reused as recorded, and equals the keyed hash anyway.
    again = holdout_rows(big, after.lazy(), shares, PEPPER).collect()
    assert again.sort("contact_key").equals(after.sort("contact_key"))
    for key, position in before.select("contact_key", "position").iter_rows():
        assert position == holdout_share(key, "champions", PEPPER)
    # Raising the share only adds people; the same member in another segment is hashed apart.
    wider = holdout_rows(small, none, {"champions": 0.6}, PEPPER).collect()
    held = set(before.filter("held_out")["contact_key"])
    assert held < set(wider.filter("held_out")["contact_key"])


def test_the_largest_share_configured_for_a_segment_is_recorded(tmp_path: Path) -> None:
    root = tmp_path
    (root / "pipeline.yaml").write_text(
        "version: 1\nsources:\n  people: {kind: files, role: contacts, path: ./x, format: csv}\n"
        "segments:\n  - name: buyers\n    where: order_count >= 1\n"
        "  - name: others\n    where: order_count >= 2\n"
        "destinations:\n"
        "  a:\n    kind: mailchimp\n    base_url: http://127.0.0.1:1\n"
        "    api_key: {secret: mc_key}\n"
        "    audiences:\n      buyers: {list: l1, holdout: 0.1}\n      others: l2\n"
        "  b:\n    kind: mailchimp\n    base_url: http://127.0.0.1:1\n"
        "    api_key: {secret: mc_key}\n"
        "    audiences:\n      buyers: {list: l3, holdout: 0.2}\n"
    )
    config = load_pipeline(str(root / "pipeline.yaml"), env={})
    assert holdout_shares(config) == {"buyers": 0.2}
