"""What every sample source shares: the sandbox's reference time, the vocabulary more than one
source draws from (domains, countries, order categories), the person behind the records,
timestamp formatting and random moments, and the messy variants of an email address."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from random import Random

REFERENCE_TIME = datetime(2026, 11, 1, tzinfo=UTC)
"""The sandbox's "now": all generated timestamps lie before it."""

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

ORDER_CATEGORIES = ("apparel", "electronics", "home", "beauty", "books", "sports")


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
