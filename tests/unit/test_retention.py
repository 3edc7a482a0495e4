"""Retention rules: catalogue defaults, pipeline.yaml overrides, refused tables, row ages."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from tasks.core.config import parse_pipeline
from tasks.core.config_maintenance import parse_days
from tasks.core.retention import RetentionRule, expired, retention_rules, sql_predicate
from tasks.core.tables import (
    CONSENT_EVENTS,
    ERASURE_LOG,
    ERASURE_REQUESTS,
    EVENTS,
    PLATFORM_SUPPRESSIONS,
    PUBLISH_LEASES,
    QUARANTINE,
    STAGED,
    SYNC_LEDGER,
    TABLES,
    VOLUME_METRICS,
)
from tasks.errors import ConfigError
from tests.unit.test_config import MINIMAL

EVENTS_SOURCE = """
  web:
    kind: events
    role: events
    landing: /tmp/landing
    fields: {email: user_email, occurred_at: ts}
"""
WITH_EVENTS = MINIMAL.replace("sources:\n", "sources:" + EVENTS_SOURCE, 1)
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _config(section: str = "") -> str:
    return WITH_EVENTS + (f"maintenance:\n  retention:\n{section}" if section else "")


def _rules(section: str = "", tables: tuple[str, ...] = ()) -> dict[str, RetentionRule]:
    config = parse_pipeline(_config(section), env={})
    names = tables or ("bronze/web", "bronze/crm", *TABLES)
    found = retention_rules(names, config.maintenance.retention, config.sources)
    return {rule.table: rule for rule in found}


def test_defaults_come_from_the_catalogue_and_the_source_role() -> None:
    rules = _rules()
    web = rules["bronze/web"]
    assert (web.days, web.column, web.key, web.configured) == (395, "ts", "event_id", False)
    assert "bronze/crm" not in rules  # contacts are kept unless configured
    assert (rules[QUARANTINE].days, rules[QUARANTINE].column) == (90, "quarantined_at")
    assert rules[VOLUME_METRICS].days == 400
    # Evidence, state and derived tables never expire by default.
    for table in (CONSENT_EVENTS, ERASURE_LOG, ERASURE_REQUESTS, SYNC_LEDGER, PUBLISH_LEASES,
                  PLATFORM_SUPPRESSIONS, EVENTS, STAGED["events"]):  # fmt: skip
        assert table not in rules, table


def test_configured_days_override_defaults_and_never_turns_one_off() -> None:
    rules = _rules(
        "    bronze/web: 8w\n    ops/quarantine: never\n    bronze/crm: 730d\n    ops/runs: 400\n"
    )
    assert rules["bronze/web"].days == 56 and rules["bronze/web"].configured
    assert QUARANTINE not in rules
    assert rules["bronze/crm"].column == "_ingested_at" and rules["bronze/crm"].days == 730
    assert rules["ops/runs"].column == "started_at"
    # Configuring a contacts source says loudly what it does; events need no warning.
    warning = rules["bronze/crm"].warning
    assert warning is not None and "leave silver/contacts and every audience" in warning
    assert rules["bronze/web"].warning is None


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (f"{CONSENT_EVENTS}: 30", "ops/consent_events: its rows never expire (consent evidence"),
        (f"{ERASURE_REQUESTS}: 30", "suppression list"),
        (f"{ERASURE_LOG}: 30", "ops/erasure_log: its rows never expire (evidence"),
        (f"{SYNC_LEDGER}: 30", "ops/sync_ledger: its rows never expire (current state"),
        (f"{PLATFORM_SUPPRESSIONS}: 30", "bronze/platform_suppressions: its rows never expire"),
        (f"{EVENTS}: 30", "silver/events: built from bronze, it has no retention of its own"),
        ("gold/customer_features: 30", "built from bronze"),
        ("ops/nothing: 30", "ops/nothing: not a table of the catalogue"),
        ("bronze/nope: 30", "maintenance.retention.bronze/nope: no source 'nope'"),
        ("bronze/web: 0", "out of range"),
        ("bronze/web: 13m", "'13m' is not a retention"),
        ("bronze/web: true", "True is not a retention"),
    ],
)
def test_refused_retentions_name_the_key_path_and_the_reason(entry: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_pipeline(_config(f"    {entry}\n"), env={}, origin="p.yaml")
    message = str(info.value)
    assert "maintenance.retention" in message and expected in message, message


def test_parse_days() -> None:
    assert [parse_days(v) for v in (395, "395d", " 57w ", "never", None, "NEVER")] == [
        395, 395, 399, None, None, None,
    ]  # fmt: skip


def test_a_row_ages_by_its_parsed_time_falling_back_to_the_ingest_time() -> None:
    rule = _rules()["bronze/web"]
    rows = pl.DataFrame(
        {
            "event_id": ["old", "new", "odd-format", "unreadable-old", "unreadable-new"],
            "ts": [
                "2025-10-01T00:00:00Z",
                "2026-11-30T00:00:00Z",
                "2025-01-02 03:04:05",
                "yesterday",
                None,
            ],
            "_ingested_at": [NOW] * 3 + [datetime(2025, 1, 1, tzinfo=UTC), NOW],
        },
        schema_overrides={"_ingested_at": pl.Datetime("us", "UTC")},
    )
    gone = rows.filter(expired(rule, rows.schema, NOW)).get_column("event_id").to_list()
    assert gone == ["old", "odd-format", "unreadable-old"]
    missing = RetentionRule("bronze/web", 10, "occurred", configured=True)
    with pytest.raises(KeyError, match="bronze/web: retention column 'occurred'"):
        expired(missing, rows.schema, NOW)


def test_the_sql_predicate_names_a_cutoff_not_a_person() -> None:
    rule = _rules()[QUARANTINE]
    schema = {"quarantined_at": pl.Datetime("us", "UTC"), "row": pl.String()}
    assert sql_predicate(rule, schema, NOW) == "`quarantined_at` < '2026-09-02T00:00:00.000000Z'"
