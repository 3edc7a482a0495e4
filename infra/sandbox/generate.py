"""Deterministic, deliberately messy sample data for the Audience Lake sandbox.

``generate(out_dir, contacts=N, seed=S)`` writes the same bytes for the same arguments: every
random choice comes from one ``random.Random(seed)`` and every timestamp is derived from
:data:`REFERENCE_TIME`, never from the wall clock.

Files written under ``out_dir``::

    crm_contacts.json                 HubSpot-style contact objects (served by CrmStandIn)
    orders.db                         SQLite, table ``orders``
    drops/events/events-0001.ndjson   web/email events, several files, with duplicate deliveries
    drops/enrichment/enrichment-0001.csv, enrichment-0002.csv
    manifest.json                     the :class:`SampleManifest` (relative paths, counts)

Command line: ``python -m infra.sandbox.generate --contacts 2000 --seed 7 --out .demo/sample``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sqlite3
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random
from typing import Any

REFERENCE_TIME = datetime(2026, 11, 1, tzinfo=UTC)
"""The sandbox's "now": all generated timestamps lie before it."""

CRM_FILE = "crm_contacts.json"
ORDERS_FILE = "orders.db"
EVENTS_DIR = Path("drops/events")
ENRICHMENT_DIR = Path("drops/enrichment")
MANIFEST_FILE = "manifest.json"

CRM_WINDOW_DAYS = 120
ORDER_WINDOW_DAYS = 365
EVENT_WINDOW_DAYS = 60
EVENTS_PER_FILE = 2000
MIN_EVENT_FILES = 3

INVALID_EMAILS: tuple[str | None, ...] = ("not-an-email", "jane@", "", None)
EVENT_TYPES = ("page_view", "click", "add_to_cart", "email_open")
EVENT_TYPE_WEIGHTS = (55, 25, 10, 10)
ORDER_CATEGORIES = ("apparel", "electronics", "home", "beauty", "books", "sports")
CURRENCIES = ("EUR", "USD", "GBP")
CURRENCY_WEIGHTS = (80, 12, 8)
LIFECYCLE_STAGES = (
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
    "evangelist",
    "other",
)
# fmt: off
FIRST_NAMES = (
    "Anna", "Ben", "Chloé", "David", "Elif", "Fatima", "Georg", "Hannah", "Ivan", "Jana",
    "Karim", "Lena", "Mateo", "Nora", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tomasz",
    "Uma", "Viktor", "Wen", "Ximena", "Yusuf", "Zoë", "Jane", "John", "María", "Jörg",
)
LAST_NAMES = (
    "Müller", "Schmidt", "Dubois", "Rossi", "García", "Nowak", "Smith", "Jones", "Kowalski",
    "Novak", "Jansen", "Larsen", "Öztürk", "Papadopoulos", "Silva", "Tanaka", "Nguyen",
    "Okafor", "Hansen", "Bianchi", "Fischer", "Weber", "Moreau", "Doe",
)
# fmt: on
NICKNAMES = {"Hannah": "Hanna", "John": "Johnny", "María": "Maria", "Jörg": "Joerg", "Ben": "Benny"}
# fmt: off
DOMAINS = (
    "example.com", "example.org", "example.net", "mail.example.com", "example.de",
    "example.fr", "post.example.co.uk",
)
COUNTRIES = (
    "DE", "de", "Germany", "FR", "France", "GB", "United Kingdom", "UK", "US", "USA",
    "NL", "nl", "ES", "IT", " PL ",
)
# fmt: on
CITIES = ("Berlin", "Hamburg", "Paris", "Lyon", "London", "Leeds", "Amsterdam", "Madrid", "Rome")
# fmt: off
COMPANIES = (
    "Acme GmbH", "Globex Ltd", "Initech", "Umbrella SA", "Hooli", "Smith, Jones & Co",
    "Stark Industries", "Wayne Enterprises", "Tyrell Corp", "Soylent BV",
)
JOB_TITLES = (
    "Engineer", "Marketing Manager", "CTO", "Head of Sales", "Analyst", "Designer",
    "Product Owner", "Founder", "Consultant", "Student",
)
# fmt: on

CRM_PROPERTIES = (
    "email",
    "firstname",
    "lastname",
    "phone",
    "country",
    "lifecyclestage",
    "hs_email_optout",
    "marketing_opt_in",
    "marketing_opt_in_at",
    "lastmodifieddate",
    "createdate",
)
ORDER_COLUMNS = (
    "order_id",
    "customer_email",
    "amount",
    "currency",
    "category",
    "status",
    "created_at",
    "updated_at",
)
EVENT_FIELDS = ("event_id", "user_email", "anonymous_id", "event_type", "occurred_at", "url")
ENRICHMENT_COLUMNS = ("email", "company", "job_title", "city", "country", "updated_at")


@dataclass(frozen=True)
class SampleManifest:
    """What :func:`generate` wrote: paths (absolute) and row counts."""

    out_dir: Path
    crm_contacts: Path
    orders_db: Path
    event_files: tuple[Path, ...]
    enrichment_files: tuple[Path, ...]
    seed: int
    contacts: int
    people: int
    duplicate_contacts: int
    invalid_emails: int
    orders: int
    events: int
    duplicate_events: int
    enrichment_rows: int
    reference_time: datetime = REFERENCE_TIME

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict with paths relative to ``out_dir`` (stable across dirs)."""

        def rel(path: Path) -> str:
            return path.relative_to(self.out_dir).as_posix()

        return {
            "seed": self.seed,
            "reference_time": iso_seconds(self.reference_time),
            "crm_contacts": rel(self.crm_contacts),
            "orders_db": rel(self.orders_db),
            "event_files": [rel(p) for p in self.event_files],
            "enrichment_files": [rel(p) for p in self.enrichment_files],
            "counts": {
                "contacts": self.contacts,
                "people": self.people,
                "duplicate_contacts": self.duplicate_contacts,
                "invalid_emails": self.invalid_emails,
                "orders": self.orders,
                "events": self.events,
                "duplicate_events": self.duplicate_events,
                "enrichment_rows": self.enrichment_rows,
            },
        }


@dataclass
class _Person:
    """One real-world person; the CRM may hold one or two records for them."""

    first: str
    last: str
    email: str | None  # canonical lower-case address; None when the CRM email is invalid
    anonymous_ids: list[str] = field(default_factory=list)


# -- formatting helpers ---------------------------------------------------------------------
def iso_millis(moment: datetime) -> str:
    """Format as HubSpot does: ``2026-10-03T11:22:33.123Z``."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def iso_seconds(moment: datetime) -> str:
    """Format as ``2026-10-03T11:22:33Z`` (whole seconds, UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _before(rng: Random, anchor: datetime, *, max_days: float, min_seconds: float = 1) -> datetime:
    """A millisecond-precision moment between ``max_days`` and ``min_seconds`` before anchor."""
    millis = rng.randint(int(min_seconds * 1000), int(max_days * 86_400_000))
    return anchor - timedelta(milliseconds=millis)


def _between(rng: Random, start: datetime, end: datetime) -> datetime:
    """A millisecond-precision moment in ``[start, end]`` (``start`` if the range is empty)."""
    span = int((end - start).total_seconds() * 1000)
    return start + timedelta(milliseconds=rng.randint(0, span)) if span > 0 else start


def _ascii(text: str) -> str:
    """Strip accents for use in an email local part (``Zoë`` -> ``zoe``)."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return folded.lower()


# -- email variants -------------------------------------------------------------------------
def _recase(rng: Random, email: str) -> str:
    """Return ``email`` with a different (but equivalent) casing."""
    local, _, domain = email.partition("@")
    options = (
        email.upper(),
        local.capitalize() + "@" + domain,
        local.title() + "@" + domain.upper(),
        "".join(ch.upper() if rng.random() < 0.5 else ch for ch in email),
    )
    variant = rng.choice(options)
    return variant if variant != email else email.upper()


def _pad(rng: Random, email: str) -> str:
    """Surround ``email`` with stray whitespace."""
    return rng.choice(("  ", " ", "\t", "")) + email + rng.choice((" ", "  ", "\u00a0", " \n"))


def _messy_email(rng: Random, email: str, *, messy_share: float) -> str:
    """With probability ``messy_share`` return a recased and/or padded variant of ``email``."""
    if rng.random() >= messy_share:
        return email
    roll = rng.random()
    if roll < 0.4:
        return _recase(rng, email)
    if roll < 0.7:
        return _pad(rng, email)
    return _pad(rng, _recase(rng, email))


# -- CRM ------------------------------------------------------------------------------------
def _new_person(rng: Random, index: int) -> _Person:
    """Create a person with a unique canonical email (the index keeps addresses unique)."""
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    pattern = rng.randrange(3)
    local = (
        f"{_ascii(first)}.{_ascii(last)}{index}",
        f"{_ascii(first)[0]}{_ascii(last)}{index}",
        f"{_ascii(first)}_{index}",
    )[pattern]
    return _Person(first=first, last=last, email=f"{local}@{rng.choice(DOMAINS)}")


def _modified_dates(rng: Random, count: int) -> list[datetime]:
    """lastmodifieddate per record over the CRM window, with groups of exact ties."""
    dates = [_before(rng, REFERENCE_TIME, max_days=CRM_WINDOW_DAYS) for _ in range(count)]
    if count < 2:
        return dates
    for group in range(max(1, count // 40)):
        anchor = 0 if group == 0 else rng.randrange(count)
        for _ in range(rng.randint(1, 3)):
            dates[rng.randrange(count)] = dates[anchor]
    if dates[1] != dates[0]:
        dates[1] = dates[0]  # guarantee at least one tie, even for tiny samples
    return dates


def _consent_properties(rng: Random, created: datetime, modified: datetime) -> dict[str, Any]:
    """hs_email_optout (~10 % "true"), marketing_opt_in (~60 % "true", ~10 % "false")."""
    roll = rng.random()
    opt_in: str | None = "true" if roll < 0.6 else "false" if roll < 0.7 else None
    opt_in_at = iso_millis(_between(rng, created, modified)) if opt_in == "true" else None
    return {
        "hs_email_optout": "true" if rng.random() < 0.10 else "false",
        "marketing_opt_in": opt_in,
        "marketing_opt_in_at": opt_in_at,
    }


def _phone(rng: Random) -> str | None:
    """A phone number in one of several inconsistent formats, or null."""
    digits = f"{rng.randrange(10**7):07d}"
    formats = (
        f"+49 30 {digits}",
        f"030-{digits}",
        f"(555) {digits[:3]}-{digits[3:]}",
        f"+44{digits}0",
        f"0033 1 {digits}",
    )
    return rng.choice((None, None, *formats))


def _names(rng: Random, person: _Person) -> tuple[str | None, str | None]:
    """First/last name; ~10 % of records miss one or both."""
    if rng.random() >= 0.10:
        return person.first, person.last
    return rng.choice(((None, person.last), (person.first, None), (None, None), ("", "")))


def _contact(
    rng: Random,
    *,
    contact_id: int,
    email: str | None,
    names: tuple[str | None, str | None],
    modified: datetime,
) -> dict[str, Any]:
    """One HubSpot-style contact object (all property values are strings or null)."""
    created = _before(rng, modified, max_days=730, min_seconds=0)
    properties: dict[str, Any] = {
        "email": email,
        "firstname": names[0],
        "lastname": names[1],
        "phone": _phone(rng),
        "country": rng.choice((*COUNTRIES, None)),
        "lifecyclestage": rng.choice(LIFECYCLE_STAGES),
        **_consent_properties(rng, created, modified),
        "lastmodifieddate": iso_millis(modified),
        "createdate": iso_millis(created),
    }
    return {
        "id": str(contact_id),
        "properties": properties,
        "createdAt": iso_millis(created),
        "updatedAt": iso_millis(modified),
        "archived": False,
    }


def _crm_email(rng: Random, person: _Person) -> str | None:
    """The email as typed into the CRM: ~3 % invalid, ~20 % recased or padded."""
    if rng.random() < 0.03:
        person.email = None
        return rng.choice(INVALID_EMAILS)
    assert person.email is not None
    return _messy_email(rng, person.email, messy_share=0.20)


def _duplicate_names(rng: Random, person: _Person) -> tuple[str | None, str | None]:
    """Names on a second CRM record: same, conflicting (nickname / new surname) or missing."""
    roll = rng.random()
    if roll < 0.5:
        return person.first, person.last
    if roll < 0.75:
        return NICKNAMES.get(person.first, person.first), rng.choice(LAST_NAMES)
    return None, None


def _duplicate_record(
    rng: Random, original: dict[str, Any], person: _Person, contact_id: int, modified: datetime
) -> dict[str, Any]:
    """A second CRM record for ``person``: other id, other casing, other lastmodifieddate."""
    assert person.email is not None
    if iso_millis(modified) == original["properties"]["lastmodifieddate"]:
        modified -= timedelta(seconds=rng.randint(1, 86_400))
    email = _recase(rng, person.email)
    if email == original["properties"]["email"]:
        email = person.email.upper() if email != person.email.upper() else person.email
    names = _duplicate_names(rng, person)
    record = _contact(rng, contact_id=contact_id, email=email, names=names, modified=modified)
    if rng.random() < 0.5:  # otherwise the re-rolled consent may conflict with the original
        for key in ("hs_email_optout", "marketing_opt_in", "marketing_opt_in_at"):
            record["properties"][key] = original["properties"][key]
    return record


def build_crm(rng: Random, count: int) -> tuple[list[dict[str, Any]], list[_Person], int]:
    """Build ``count`` CRM records; returns (records, distinct people, duplicate records)."""
    dates = _modified_dates(rng, count)
    records: list[dict[str, Any]] = []
    people: list[_Person] = []
    first_record: dict[int, dict[str, Any]] = {}  # id(person) -> that person's first record
    duplicated: set[int] = set()
    contact_id = 1000
    for index in range(count):
        contact_id += rng.randint(1, 3)
        candidates = [p for p in people[-50:] if p.email and id(p) not in duplicated]
        if rng.random() < 0.05 and candidates:
            person = rng.choice(candidates)
            duplicated.add(id(person))
            original = first_record[id(person)]
            records.append(_duplicate_record(rng, original, person, contact_id, dates[index]))
            continue
        person = _new_person(rng, index)
        email = _crm_email(rng, person)
        names = _names(rng, person)
        record = _contact(
            rng, contact_id=contact_id, email=email, names=names, modified=dates[index]
        )
        people.append(person)
        first_record[id(person)] = record
        records.append(record)
    return records, people, len(duplicated)


# -- orders ---------------------------------------------------------------------------------
def _order_count(rng: Random) -> int:
    """Orders per person: mean ~1.5, many zero, a few with 10+."""
    roll = rng.random()
    if roll < 0.40:
        return 0
    if roll < 0.68:
        return 1
    if roll < 0.82:
        return 2
    if roll < 0.94:
        return rng.randint(3, 5)
    if roll < 0.985:
        return rng.randint(6, 9)
    return rng.randint(10, 14)


def _amount(rng: Random) -> str:
    """An amount as text; ~1 % are unusable ("n/a") or negative."""
    roll = rng.random()
    if roll < 0.005:
        return "n/a"
    if roll < 0.01:
        return f"-{rng.uniform(1, 50):.2f}"
    return f"{rng.uniform(4.5, 320):.2f}"


def _order(rng: Random, email: str) -> dict[str, str]:
    """One order row (without order_id); ~10 % are late-updated."""
    created = _before(rng, REFERENCE_TIME, max_days=ORDER_WINDOW_DAYS, min_seconds=3600)
    created = created.replace(microsecond=0)
    status, updated = rng.choice(("paid", "shipped", "delivered")), created
    if rng.random() < 0.10:
        status = rng.choice(("shipped", "delivered", "refunded", "cancelled"))
        latest = min(REFERENCE_TIME - timedelta(seconds=1), created + timedelta(days=20))
        updated = _between(rng, created + timedelta(hours=1), latest).replace(microsecond=0)
    return {
        "customer_email": email,
        "amount": _amount(rng),
        "currency": rng.choices(CURRENCIES, CURRENCY_WEIGHTS)[0],
        "category": rng.choice(ORDER_CATEGORIES),
        "status": status,
        "created_at": iso_seconds(created),
        "updated_at": iso_seconds(updated),
    }


def build_orders(rng: Random, people: Sequence[_Person]) -> list[dict[str, str]]:
    """Orders for people with a valid email, plus ~2 % from guests not in the CRM."""
    orders: list[dict[str, str]] = []
    for person in people:
        if person.email is None:
            continue
        for _ in range(_order_count(rng)):
            email = _messy_email(rng, person.email, messy_share=0.5)
            orders.append(_order(rng, email))
    for guest in range(max(1, round(len(orders) * 0.02))):
        email = _messy_email(rng, f"guest{guest}@{rng.choice(DOMAINS)}", messy_share=0.3)
        orders.append(_order(rng, email))
    if len(orders) >= 10:  # make sure the bad-amount cases exist even in small samples
        orders[rng.randrange(len(orders))]["amount"] = "n/a"
        orders[rng.randrange(len(orders))]["amount"] = "-12.50"
    orders.sort(key=lambda row: (row["created_at"], row["customer_email"], row["amount"]))
    return [{"order_id": f"ord_{n:07d}", **row} for n, row in enumerate(orders, start=1)]


def write_orders_db(path: Path, orders: Sequence[dict[str, str]]) -> None:
    """(Re)create the SQLite ``orders`` table at ``path``."""
    path.unlink(missing_ok=True)
    connection = sqlite3.connect(path)
    try:
        with connection:
            connection.execute(
                "CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer_email TEXT, "
                "amount TEXT, currency TEXT, category TEXT, status TEXT, created_at TEXT, "
                "updated_at TEXT)"
            )
            connection.executemany(
                f"INSERT INTO orders VALUES ({', '.join('?' * len(ORDER_COLUMNS))})",
                [tuple(row[col] for col in ORDER_COLUMNS) for row in orders],
            )
    finally:
        connection.close()


# -- events ---------------------------------------------------------------------------------
def _event_url(rng: Random, event_type: str) -> str:
    """A plausible URL for the event type."""
    category = rng.choice(ORDER_CATEGORIES)
    if event_type == "email_open":
        return f"https://email.example.com/o/campaign-{rng.randint(1, 40)}"
    if event_type == "add_to_cart":
        return f"https://shop.example.com/cart/add?sku={category[:3].upper()}-{rng.randint(1, 999)}"
    suffix = "?ref=newsletter" if event_type == "click" else ""
    return f"https://shop.example.com/{category}/item-{rng.randint(1, 500)}{suffix}"


def _event(rng: Random, email: str | None, anonymous_id: str) -> dict[str, Any]:
    """One event; the email is sometimes recased and sometimes null (logged-out visit)."""
    event_type = rng.choices(EVENT_TYPES, EVENT_TYPE_WEIGHTS)[0]
    user_email = None
    if email is not None and rng.random() >= 0.15:
        user_email = _messy_email(rng, email, messy_share=0.2)
    occurred = _before(rng, REFERENCE_TIME, max_days=EVENT_WINDOW_DAYS)
    return {
        "event_id": f"evt_{rng.getrandbits(80):020x}",
        "user_email": user_email,
        "anonymous_id": anonymous_id,
        "event_type": event_type,
        "occurred_at": iso_millis(occurred),
        "url": _event_url(rng, event_type),
    }


def _anonymous_id(rng: Random) -> str:
    """A browser/device id such as ``anon_1a2b3c4d5e6f``."""
    return f"anon_{rng.getrandbits(48):012x}"


def build_events(rng: Random, people: Sequence[_Person], contacts: int) -> list[dict[str, Any]]:
    """~5 events per contact, sorted by time; includes anonymous-only visitors."""
    events: list[dict[str, Any]] = []
    for person in people:
        person.anonymous_ids = [_anonymous_id(rng) for _ in range(rng.randint(1, 2))]
        for _ in range(rng.randint(0, 10)):
            events.append(_event(rng, person.email, rng.choice(person.anonymous_ids)))
    while len(events) < 5 * contacts:
        events.append(_event(rng, None, _anonymous_id(rng)))
    events.sort(key=lambda event: (event["occurred_at"], event["event_id"]))
    return events


def split_event_files(rng: Random, events: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split into files and re-deliver ~3 % of events verbatim in a later file."""
    file_count = max(MIN_EVENT_FILES, math.ceil(len(events) / EVENTS_PER_FILE))
    size = max(1, math.ceil(len(events) / file_count))
    files = [list(events[i * size : (i + 1) * size]) for i in range(file_count)]
    redeliveries: list[list[dict[str, Any]]] = [[] for _ in files]
    for index, chunk in enumerate(files[:-1]):
        for event in chunk:
            if rng.random() < 0.03:
                redeliveries[rng.randint(index + 1, file_count - 1)].append(dict(event))
    for chunk, extra in zip(files, redeliveries, strict=True):
        for event in extra:
            chunk.insert(rng.randint(0, len(chunk)), event)
    return files


def write_event_files(directory: Path, files: Sequence[Sequence[dict[str, Any]]]) -> list[Path]:
    """Write ``events-0001.ndjson`` ... (one JSON object per line)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("events-*.ndjson"):
        stale.unlink()
    paths = []
    for number, chunk in enumerate(files, start=1):
        path = directory / f"events-{number:04d}.ndjson"
        lines = [json.dumps(event, ensure_ascii=False) for event in chunk]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        paths.append(path)
    return paths


# -- enrichment -----------------------------------------------------------------------------
def _messy_case(rng: Random, text: str) -> str:
    """Same text, inconsistent casing."""
    return rng.choice((text, text, text.lower(), text.upper()))


def _enrichment_row(rng: Random, email: str, updated: datetime) -> dict[str, str]:
    """One enrichment row; empty strings mean "unknown"."""
    return {
        "email": _messy_email(rng, email, messy_share=0.4),
        "company": _messy_case(rng, rng.choice(COMPANIES)),
        "job_title": rng.choice((*JOB_TITLES, "")),
        "city": _messy_case(rng, rng.choice((*CITIES, ""))),
        "country": rng.choice(COUNTRIES).strip(),
        "updated_at": iso_seconds(updated),
    }


def build_enrichment(
    rng: Random, people: Sequence[_Person]
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Rows for ~40 % of people; ~10 % of them get a second row with another updated_at."""
    first: list[dict[str, str]] = []
    second: list[dict[str, str]] = []
    for person in people:
        if person.email is None or rng.random() >= 0.40:
            continue
        updated = _before(rng, REFERENCE_TIME, max_days=90, min_seconds=86_400)
        first.append(_enrichment_row(rng, person.email, updated.replace(microsecond=0)))
        if rng.random() < 0.10:
            other = _before(rng, REFERENCE_TIME, max_days=90).replace(microsecond=0)
            if iso_seconds(other) == first[-1]["updated_at"]:
                other -= timedelta(seconds=1)
            target = first if rng.random() < 0.5 else second
            target.append(_enrichment_row(rng, person.email, other))
    return first, second


def write_enrichment_files(
    directory: Path, parts: Sequence[Sequence[dict[str, str]]]
) -> list[Path]:
    """Write ``enrichment-0001.csv`` ... with a header row (``\\n`` line endings)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("enrichment-*.csv"):
        stale.unlink()
    paths = []
    for number, rows in enumerate(parts, start=1):
        path = directory / f"enrichment-{number:04d}.csv"
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=ENRICHMENT_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        paths.append(path)
    return paths


# -- entry points ---------------------------------------------------------------------------
def generate(out_dir: Path, *, contacts: int = 2000, seed: int = 7) -> SampleManifest:
    """Write the sample data set into ``out_dir`` (created if needed) and describe it.

    The output is byte-identical for equal ``contacts`` and ``seed``. Files from an earlier
    run in the same directory are replaced.
    """
    if contacts < 1:
        raise ValueError(f"generate(contacts=...) must be at least 1, got {contacts}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = Random(seed)
    records, people, duplicates = build_crm(rng, contacts)
    orders = build_orders(rng, people)
    event_files = split_event_files(rng, build_events(rng, people, contacts))
    enrichment = build_enrichment(rng, people)

    crm_path = out_dir / CRM_FILE
    crm_path.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", "utf-8")
    write_orders_db(out_dir / ORDERS_FILE, orders)
    manifest = SampleManifest(
        out_dir=out_dir,
        crm_contacts=crm_path,
        orders_db=out_dir / ORDERS_FILE,
        event_files=tuple(write_event_files(out_dir / EVENTS_DIR, event_files)),
        enrichment_files=tuple(write_enrichment_files(out_dir / ENRICHMENT_DIR, enrichment)),
        seed=seed,
        contacts=len(records),
        people=len(people),
        duplicate_contacts=duplicates,
        invalid_emails=sum(1 for p in people if p.email is None),
        orders=len(orders),
        events=sum(len(chunk) for chunk in event_files),
        duplicate_events=sum(len(chunk) for chunk in event_files)
        - len({e["event_id"] for chunk in event_files for e in chunk}),
        enrichment_rows=sum(len(part) for part in enrichment),
    )
    manifest_text = json.dumps(manifest.to_json(), indent=2) + "\n"
    (out_dir / MANIFEST_FILE).write_text(manifest_text, "utf-8")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m infra.sandbox.generate --contacts N --seed S --out DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--contacts", type=int, default=2000, help="CRM records (default 2000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    args = parser.parse_args(argv)
    manifest = generate(args.out, contacts=args.contacts, seed=args.seed)
    print(json.dumps(manifest.to_json()["counts"], indent=2))
    print(f"wrote sample data to {manifest.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
