"""What the Klaviyo stand-in stores (profiles, lists, import jobs) and what it records for
tests (injected faults, exchanges, rate windows).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from infra.sandbox._http import Request, Response
from infra.sandbox.klaviyo.wire import LOCATION_KEYS, PROFILE_ATTRIBUTES, _iso, _now


# --- the account's state ------------------------------------------------------------------------
@dataclass
class _Profile:
    id: str
    email: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    location: dict[str, Any] | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    created: datetime = field(default_factory=_now)
    updated: datetime = field(default_factory=_now)
    consent: str = "NEVER_SUBSCRIBED"
    consent_timestamp: datetime | None = None
    consent_method: str | None = None
    suppressions: list[tuple[str, datetime]] = field(default_factory=list)
    list_suppressions: list[tuple[str, str, datetime]] = field(default_factory=list)

    def touch(self) -> None:
        self.updated = _now()

    def suppress(self, reason: str, at: datetime | None = None) -> None:
        if all(existing != reason for existing, _ in self.suppressions):
            self.suppressions.append((reason, at or _now()))
        self.touch()

    def subscriptions(self) -> dict[str, Any]:
        last = max(
            [self.updated, *(t for _, t in self.suppressions)],
            default=self.updated,
        )
        return {
            "email": {
                "marketing": {
                    "can_receive_email_marketing": not self.suppressions
                    and self.consent != "UNSUBSCRIBED",
                    "consent": self.consent,
                    "consent_timestamp": _iso(self.consent_timestamp)
                    if self.consent_timestamp
                    else None,
                    "last_updated": _iso(last),
                    "method": self.consent_method,
                    "method_detail": "",
                    "custom_method_detail": None,
                    "double_optin": None,
                    "suppression": [
                        {"reason": reason, "timestamp": _iso(at)}
                        for reason, at in self.suppressions
                    ],
                    "list_suppressions": [
                        {"list_id": list_id, "reason": reason, "timestamp": _iso(at)}
                        for list_id, reason, at in self.list_suppressions
                    ],
                }
            }
        }

    def to_wire(self, base_url: str, *, with_subscriptions: bool) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            name: self.attributes.get(name) for name in PROFILE_ATTRIBUTES
        }
        attributes["email"] = self.email
        attributes.update(
            {
                "created": _iso(self.created),
                "updated": _iso(self.updated),
                "last_event_date": None,
                # Klaviyo sends an object of nulls when no location is known (the spec's
                # nullable beside a $ref is ignored under OpenAPI 3.0, so null is invalid).
                "location": {**dict.fromkeys(LOCATION_KEYS), **copy.deepcopy(self.location or {})},
                "properties": copy.deepcopy(self.properties),
            }
        )
        if with_subscriptions:
            attributes["subscriptions"] = self.subscriptions()
        return {
            "type": "profile",
            "id": self.id,
            "attributes": attributes,
            "links": {"self": f"{base_url}/api/profiles/{self.id}/"},
        }


@dataclass
class _List:
    id: str
    name: str
    opt_in_process: str = "single_opt_in"
    created: datetime = field(default_factory=_now)
    updated: datetime = field(default_factory=_now)
    members: dict[str, datetime] = field(default_factory=dict)


@dataclass
class _ImportJob:
    id: str
    profiles: list[Any]
    list_ids: list[str]
    created_at: datetime = field(default_factory=_now)
    status: str = "queued"
    started_at: datetime | None = None
    completed_at: datetime | None = None
    completed_count: int = 0
    failed_count: int = 0
    reads: int = 0
    fail_as: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    profile_ids: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status not in {"queued", "processing"}


@dataclass(frozen=True)
class _Fault:
    status: int
    retry_after: int | None


@dataclass(frozen=True)
class RecordedExchange:
    """One request the stand-in received and the response it sent (for contract tests)."""

    request: Request
    response: Response


@dataclass
class _Window:
    """Fixed per-second and per-minute windows of one operation class."""

    second: int = -1
    minute: int = -1
    in_second: int = 0
    in_minute: int = 0
