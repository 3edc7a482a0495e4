"""What every contender shares: the counts each one returns for ``transform_bench`` to print
side by side, and the Python helpers the contenders apply once per distinct value (HMAC contact
keys, phone numbers to E.164)."""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from typing import Any

from tasks.core.normalise import _e164

Counts = dict[str, Any]


def result_counts(
    contacts: int,
    orders: int,
    events: int,
    features: int,
    audience: dict[str, int],
    lifetime_value: float,
) -> Counts:
    return {
        "contacts": contacts,
        "orders": orders,
        "events": events,
        "features": features,
        "audience": dict(sorted(audience.items())),
        "lifetime_value": round(lifetime_value, 2),
    }


def contact_key_of(pepper: bytes) -> Any:
    def key(email: str) -> str:
        return "v1:" + hmac.new(pepper, email.encode("utf-8"), hashlib.sha256).hexdigest()

    return key


def e164_of(region: str) -> Any:
    def e164(raw: str) -> str | None:
        return _e164(raw, region)

    return e164


def normalised(text: str) -> str:
    """NFC (used by the checks in the benchmark)."""
    return unicodedata.normalize("NFC", text)
