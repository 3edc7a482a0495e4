"""The sample-data generator is deterministic and as messy as documented."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from infra.sandbox.generate import (
    CRM_PROPERTIES,
    ENRICHMENT_COLUMNS,
    EVENT_FIELDS,
    EVENT_TYPES,
    INVALID_EMAILS,
    ORDER_CATEGORIES,
    ORDER_COLUMNS,
    REFERENCE_TIME,
    SampleManifest,
    generate,
    main,
)

HUBSPOT_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
ORDER_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _norm(email: str | None) -> str | None:
    return email.strip().lower() if email else None


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleManifest:
    return generate(tmp_path_factory.mktemp("sample"), contacts=600, seed=7)


@pytest.fixture(scope="module")
def crm(sample: SampleManifest) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(sample.crm_contacts.read_text("utf-8"))
    return data


def test_same_arguments_give_byte_identical_output(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", contacts=250, seed=11)
    second = generate(tmp_path / "b", contacts=250, seed=11)

    assert _files(first.out_dir) == _files(second.out_dir)
    assert first.to_json() == second.to_json()


def test_rerun_in_same_directory_replaces_files(tmp_path: Path) -> None:
    bigger = generate(tmp_path / "reused", contacts=1300, seed=3)
    fresh = generate(tmp_path / "fresh", contacts=40, seed=3)
    again = generate(tmp_path / "reused", contacts=40, seed=3)

    assert len(bigger.event_files) > len(again.event_files)  # stale files had to go
    assert _files(again.out_dir) == _files(fresh.out_dir)


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    one = generate(tmp_path / "a", contacts=50, seed=1)
    two = generate(tmp_path / "b", contacts=50, seed=2)

    assert one.crm_contacts.read_bytes() != two.crm_contacts.read_bytes()


def test_rejects_non_positive_contact_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="contacts"):
        generate(tmp_path, contacts=0)


def test_manifest_matches_files(sample: SampleManifest, crm: list[dict[str, Any]]) -> None:
    written = json.loads((sample.out_dir / "manifest.json").read_text("utf-8"))

    assert written == sample.to_json()
    assert sample.contacts == len(crm) == 600
    assert sample.people + sample.duplicate_contacts == sample.contacts
    assert len(sample.event_files) >= 3
    assert [p.name for p in sample.enrichment_files] == [
        "enrichment-0001.csv",
        "enrichment-0002.csv",
    ]


def test_crm_contacts_are_hubspot_shaped(crm: list[dict[str, Any]]) -> None:
    for contact in crm:
        assert set(contact) == {"id", "properties", "createdAt", "updatedAt", "archived"}
        assert contact["id"].isdigit() and contact["archived"] is False
        props = contact["properties"]
        assert tuple(props) == CRM_PROPERTIES
        assert all(value is None or isinstance(value, str) for value in props.values())
        assert HUBSPOT_TIME.match(props["lastmodifieddate"])
        assert props["lastmodifieddate"] == contact["updatedAt"]
        assert props["createdate"] == contact["createdAt"] <= props["lastmodifieddate"]
        modified = _parse(props["lastmodifieddate"])
        assert REFERENCE_TIME - timedelta(days=122) < modified < REFERENCE_TIME
    assert len({c["id"] for c in crm}) == len(crm)


def test_crm_is_messy_in_the_documented_ways(crm: list[dict[str, Any]]) -> None:
    props = [c["properties"] for c in crm]
    emails = [p["email"] for p in props]
    share = len(props)

    unclean = [e for e in emails if e and "@" in e[1:-1] and e != e.strip().lower()]
    assert 0.12 < len(unclean) / share < 0.30
    assert any(e != e.strip() for e in unclean) and any(e == e.strip() for e in unclean)
    invalid = [e for e in emails if e in INVALID_EMAILS]
    assert 0.005 < len(invalid) / share < 0.06
    assert 0.05 < sum(p["hs_email_optout"] == "true" for p in props) / share < 0.16
    assert 0.5 < sum(p["marketing_opt_in"] == "true" for p in props) / share < 0.7
    assert {p["marketing_opt_in"] for p in props} == {"true", "false", None}
    assert all(
        (p["marketing_opt_in_at"] is not None) == (p["marketing_opt_in"] == "true") for p in props
    )
    missing_names = [p for p in props if not p["firstname"] or not p["lastname"]]
    assert 0.05 < len(missing_names) / share < 0.2


def test_crm_duplicates_and_ties(crm: list[dict[str, Any]]) -> None:
    by_email: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for contact in crm:
        email = _norm(contact["properties"]["email"])
        if email and "@" in email[1:-1]:
            by_email[email].append(contact)
    twins = [records for records in by_email.values() if len(records) == 2]

    assert 0.02 < len(twins) / len(crm) < 0.08
    assert max(len(records) for records in by_email.values()) == 2
    for first, second in twins:
        assert first["id"] != second["id"]
        assert first["properties"]["email"] != second["properties"]["email"]  # other casing
        modified = {
            first["properties"]["lastmodifieddate"],
            second["properties"]["lastmodifieddate"],
        }
        assert len(modified) == 2
    ties = Counter(c["properties"]["lastmodifieddate"] for c in crm)
    assert sum(1 for n in ties.values() if n > 1) >= 5


def test_orders_table(sample: SampleManifest, crm: list[dict[str, Any]]) -> None:
    connection = sqlite3.connect(sample.orders_db)
    try:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(orders)")]
        rows = connection.execute(f"SELECT {', '.join(ORDER_COLUMNS)} FROM orders").fetchall()
    finally:
        connection.close()
    orders = [dict(zip(ORDER_COLUMNS, row, strict=True)) for row in rows]
    crm_emails = {_norm(c["properties"]["email"]) for c in crm}

    assert tuple(columns) == ORDER_COLUMNS
    assert len(orders) == sample.orders
    assert 1.2 < len(orders) / sample.contacts < 1.8
    assert all(
        ORDER_TIME.match(o["created_at"]) and ORDER_TIME.match(o["updated_at"]) for o in orders
    )
    assert {o["currency"] for o in orders} == {"EUR", "USD", "GBP"}
    assert Counter(o["currency"] for o in orders).most_common(1)[0][0] == "EUR"
    assert {o["category"] for o in orders} <= set(ORDER_CATEGORIES)
    late = [o for o in orders if o["updated_at"] > o["created_at"]]
    assert 0.05 < len(late) / len(orders) < 0.15
    amounts = {o["amount"] for o in orders}
    assert "n/a" in amounts and any(a.startswith("-") for a in amounts)
    strangers = [o for o in orders if _norm(o["customer_email"]) not in crm_emails]
    assert 0.005 < len(strangers) / len(orders) < 0.05
    recased = [o for o in orders if o["customer_email"] != _norm(o["customer_email"])]
    assert recased
    per_customer = Counter(_norm(o["customer_email"]) for o in orders)
    assert max(per_customer.values()) >= 6


def test_event_files_with_duplicate_deliveries(sample: SampleManifest) -> None:
    seen: dict[str, tuple[int, str]] = {}
    duplicates = 0
    events = 0
    null_emails = 0
    for index, path in enumerate(sample.event_files):
        for line in path.read_text("utf-8").splitlines():
            event = json.loads(line)
            events += 1
            assert tuple(event) == EVENT_FIELDS
            assert event["event_type"] in EVENT_TYPES
            null_emails += event["user_email"] is None
            if event["event_id"] in seen:
                first_index, first_line = seen[event["event_id"]]
                assert first_index < index and first_line == line
                duplicates += 1
            else:
                seen[event["event_id"]] = (index, line)

    assert events == sample.events
    assert duplicates == sample.duplicate_events > 0
    assert 0.01 < duplicates / events < 0.05
    assert 4 * sample.contacts <= events <= 6 * sample.contacts
    assert null_emails > 0


def test_enrichment_rows(sample: SampleManifest) -> None:
    rows: list[dict[str, str]] = []
    for path in sample.enrichment_files:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            assert tuple(reader.fieldnames or ()) == ENRICHMENT_COLUMNS
            rows.extend(reader)
    by_email: dict[str | None, set[str]] = defaultdict(set)
    for row in rows:
        by_email[_norm(row["email"])].add(row["updated_at"])

    assert len(rows) == sample.enrichment_rows
    assert 0.3 < len(by_email) / sample.people < 0.5
    assert any(len(stamps) == 2 for stamps in by_email.values())
    assert any(row["email"] != _norm(row["email"]) for row in rows)


def test_cli_writes_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--contacts", "20", "--seed", "5", "--out", str(tmp_path)]) == 0

    assert (tmp_path / "crm_contacts.json").is_file()
    assert '"contacts": 20' in capsys.readouterr().out
