"""Segments: predicates validated at load, mutually exclusive priorities, consented members only."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import polars as pl
import pytest

from tasks.core.config import FEATURE_COLUMNS, Segment, check_segment_predicate, parse_pipeline
from tasks.core.contracts import AudienceMember, split_valid
from tasks.core.segments import audience_members, segment_membership
from tasks.core.tables import AUDIENCE_SCHEMA
from tasks.errors import ConfigError

NOW = datetime(2026, 11, 1, tzinfo=UTC)

BASE = """
sources:
  crm:
    kind: sql
    role: contacts
    url: sqlite:///x.db
    table: people
    primary_key: id
    fields: {source_id: id}
segments:
"""


def config_with(segments: str) -> str:
    return BASE + segments


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("order_count >", "segment 'vip': invalid predicate 'order_count >'"),
        ("shoe_size > 42", "segment 'vip': unknown column(s) ['shoe_size']"),
        ("revenue > 500", "segment 'vip': unknown column(s) ['revenue']"),  # renamed feature
        ("order_count + 1", "segment 'vip': predicate 'order_count + 1' is Int64, not a boolean"),
        ("country > 3", "segment 'vip': predicate 'country > 3'"),  # string vs number
        ("SELECT * FROM x", "segment 'vip': invalid predicate"),
    ],
)
def test_bad_predicates_fail_at_load_naming_the_segment(where: str, message: str) -> None:
    text = config_with(f'  - name: vip\n    where: "{where}"\n')
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_pipeline(text, env={})


@pytest.mark.parametrize(
    "where",
    [
        "order_count >= 3",
        "lifetime_value > 500 AND country = 'DE'",
        "r_score >= 4 AND f_score >= 4 AND m_score >= 4",
        "rfm_score IN ('555', '554')",
        "favourite_category = 'books' OR events_30d > 0",
        "first_order_at IS NOT NULL AND recency_days <= 30",
        "days_since_last_activity > 90",
    ],
)
def test_every_feature_can_be_used_in_a_predicate(where: str) -> None:
    check_segment_predicate(Segment(name="ok", where=where))


def test_duplicate_names_and_priorities_are_rejected() -> None:
    twice = "  - {name: a, where: order_count > 0}\n  - {name: a, where: order_count > 1}\n"
    with pytest.raises(ConfigError, match="segment 'a' is defined twice"):
        parse_pipeline(config_with(twice), env={})
    same = (
        "  - {name: a, where: order_count > 0, priority: 1}\n"
        "  - {name: b, where: order_count > 1, priority: 1}\n"
    )
    with pytest.raises(ConfigError, match="segment 'b': priority 1 is already used by segment 'a'"):
        parse_pipeline(config_with(same), env={})
    with pytest.raises(ConfigError, match=r"segments\.0\.priority"):
        parse_pipeline(config_with("  - {name: a, where: order_count > 0, priority: 0}\n"), env={})


def features(**columns: list[object]) -> pl.LazyFrame:
    n = len(next(iter(columns.values())))
    data = {name: [None] * n for name in FEATURE_COLUMNS}
    data["contact_key"] = [f"v1:{i:064x}" for i in range(n)]
    data.update(columns)
    return pl.DataFrame(data, schema=FEATURE_COLUMNS).lazy()


def test_priority_segments_are_mutually_exclusive_and_others_independent() -> None:
    f = features(order_count=[10, 10, 3, 0], lifetime_value=[900.0, 100.0, 900.0, 0.0])
    segments = [
        Segment(name="vip", where="order_count >= 5 AND lifetime_value > 500", priority=1),
        Segment(name="regular", where="order_count >= 3", priority=2),
        Segment(name="big", where="lifetime_value > 500"),  # no priority: independent
        Segment(name="fans", where="order_count >= 5", priority=3),
    ]
    m = segment_membership(f, segments).collect()
    assert m.select("vip", "regular", "big", "fans").rows() == [
        (True, False, True, False),  # vip wins over regular and fans; big is independent
        (False, True, False, False),  # regular (priority 2) beats fans (priority 3)
        (False, True, True, False),
        (False, False, False, False),
    ]


def test_priority_order_not_list_order_decides() -> None:
    f = features(order_count=[10])
    first = Segment(name="first_listed", where="order_count > 1", priority=2)
    second = Segment(name="second_listed", where="order_count > 5", priority=1)
    m = segment_membership(f, [first, second]).collect()
    assert m.select("first_listed", "second_listed").row(0) == (False, True)


def test_null_features_never_match() -> None:
    f = features(r_score=[None, 5])
    m = segment_membership(f, [Segment(name="hot", where="r_score >= 4")]).collect()
    assert m["hot"].to_list() == [False, True]


def contacts(statuses: list[str]) -> pl.LazyFrame:
    n = len(statuses)
    return pl.LazyFrame(
        {
            "contact_key": [f"v1:{i:064x}" for i in range(n)],
            "email": [f"p{i}@x.io" for i in range(n)],
            "first_name": ["Ann"] * n,
            "last_name": [None] * n,
            "phone": ["+49301234567"] * n,
            "consent_status": statuses,
            "consent_at": [NOW if s != "unknown" else None for s in statuses],
        },
        schema_overrides={"last_name": pl.String, "consent_at": pl.Datetime("us", "UTC")},
    )


def test_audience_holds_only_current_opt_ins_with_the_fields_to_send() -> None:
    f = features(order_count=[5, 5, 5, 5], country=["DE", "FR", None, "GB"])
    people = contacts(["subscribed", "unsubscribed", "unknown", "subscribed"])
    segments = [
        Segment(name="buyers", where="order_count > 1"),
        Segment(name="top", where="order_count > 1", priority=1),
        Segment(name="nobody", where="order_count > 100"),
    ]
    members = audience_members(f, people, segments).collect()
    assert dict(members.schema) == AUDIENCE_SCHEMA
    assert members.select("segment", "email", "country").rows() == [
        ("buyers", "p0@x.io", "DE"),
        ("buyers", "p3@x.io", "GB"),
        ("top", "p0@x.io", "DE"),
        ("top", "p3@x.io", "GB"),
    ]
    split = split_valid(members, AudienceMember, table="gold/audience_members", run_id="t", now=NOW)
    assert split.rejected == 0


def test_no_segments_no_members() -> None:
    members = audience_members(features(order_count=[1]), contacts(["subscribed"]), []).collect()
    assert members.is_empty() and dict(members.schema) == AUDIENCE_SCHEMA


def test_repository_segments_compile_and_exclusive_ones_have_distinct_priorities() -> None:
    from pathlib import Path

    from tasks.core.config import load_pipeline

    config = load_pipeline(Path(__file__).resolve().parents[2] / "pipeline.yaml", env={})
    priorities = [s.priority for s in config.segments if s.priority is not None]
    assert priorities and len(priorities) == len(set(priorities))
    published = {seg for d in config.destinations.values() for seg in d.audiences}
    assert published <= {s.name for s in config.segments}
