"""The enrichment sample: company, job title and location rows for ~40 % of people (some twice
with another updated_at), written as CSV drop files."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from random import Random

from infra.sandbox.sample.common import (
    COUNTRIES,
    REFERENCE_TIME,
    _before,
    _messy_email,
    _Person,
    iso_seconds,
)

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
ENRICHMENT_COLUMNS = ("email", "company", "job_title", "city", "country", "updated_at")


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
