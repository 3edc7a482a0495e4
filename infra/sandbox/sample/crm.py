"""The CRM sample: HubSpot-style contact records with duplicates (other casing, conflicting
names and consent), ties on lastmodifieddate, invalid emails and missing names."""

from __future__ import annotations

from datetime import datetime, timedelta
from random import Random
from typing import Any

from infra.sandbox.sample.common import (
    COUNTRIES,
    DOMAINS,
    REFERENCE_TIME,
    _ascii,
    _before,
    _between,
    _messy_email,
    _Person,
    _recase,
    iso_millis,
)

CRM_WINDOW_DAYS = 120
INVALID_EMAILS: tuple[str | None, ...] = ("not-an-email", "jane@", "", None)
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
