"""HubSpot consent: opt-outs written (``unsubscribe``) and read back (``suppressions_since``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from tasks.connectors.destinations.hubspot.client import HubSpotClient
from tasks.connectors.destinations.hubspot.payloads import _emails_of
from tasks.connectors.destinations.hubspot.responses import _failed_subscribers, _suppression
from tasks.connectors.destinations.protocol import (
    Member,
    RecordResult,
    Suppression,
    SuppressionPage,
)
from tasks.connectors.destinations.wire import chunks
from tasks.errors import PublishError

MEMBERSHIP_PAGE = 250
MAX_MEMBERSHIP_PAGES = 20_000
CURSOR_OVERLAP = timedelta(minutes=1)


class HubSpotConsent(HubSpotClient):
    """Subscription statuses (communication preferences v4) of the list's members."""

    # -- consent ----------------------------------------------------------------------------------
    def unsubscribe(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        """Opt members out of the subscription type (or of all email, per configuration)."""
        yield from self._pipelined(
            chunks(members, self._batch_size), self._unsubscribe_batch, _emails_of
        )

    def _unsubscribe_batch(self, batch: Sequence[Member]) -> list[RecordResult]:
        emails = list(dict.fromkeys(m.email for m in batch))
        what = f"unsubscribe {len(emails)} contacts"
        if self._unsubscribe_scope == "all":
            response = self._call(
                "POST",
                "/communication-preferences/v4/statuses/batch/unsubscribe-all",
                params={"channel": "EMAIL"},
                json={"inputs": emails},
                what=what,
            )
        else:
            inputs = [
                {
                    "subscriberIdString": email,
                    "subscriptionId": self._subscription_id,
                    "statusState": "UNSUBSCRIBED",
                    "channel": "EMAIL",
                }
                for email in emails
            ]
            response = self._call(
                "POST",
                "/communication-preferences/v4/statuses/batch/write",
                json={"inputs": inputs},
                what=what,
            )
        failed = _failed_subscribers(self._body(response, what))
        # An opt-out HubSpot refused is tried again next run, whatever the reason: never lost.
        return [
            RecordResult(m.contact_key, ok=False, error=failed[key], retryable=True)
            if (key := m.email.strip().lower()) in failed
            else RecordResult(m.contact_key, ok=True)
            for m in batch
        ]

    def suppressions_since(self, audience: str, since: datetime | None) -> SuppressionPage:
        """Opt-outs of the list's members whose HubSpot timestamp is after ``since``."""
        started = self._clock()
        emails = self._list_emails(audience)
        found: dict[str, Suppression] = {}
        reads = self._pipelined(chunks(emails, self._batch_size), self._read_opt_outs)
        for suppression in reads:
            if since is not None and suppression.occurred_at <= since:
                continue
            current = found.get(suppression.email)
            if current is None or suppression.occurred_at > current.occurred_at:
                found[suppression.email] = suppression
        # A status stamped just before ``started`` may become visible only after this read:
        # the next read starts a little earlier (duplicates are harmless evidence).
        cursor = started - CURSOR_OVERLAP
        if since is not None:
            cursor = max(cursor, since)
        return SuppressionPage(sorted(found.values(), key=lambda s: s.occurred_at), cursor)

    def _list_emails(self, audience: str) -> list[str]:
        record_ids: list[str] = []
        after: str | None = None
        for _ in range(MAX_MEMBERSHIP_PAGES):
            params: dict[str, str | int] = {"limit": MEMBERSHIP_PAGE}
            if after is not None:
                params["after"] = after
            what = f"read memberships of list {audience}"
            body = self._body(
                self._call(
                    "GET", f"/crm/v3/lists/{audience}/memberships", params=params, what=what
                ),
                what,
            )
            record_ids.extend(str(r["recordId"]) for r in body.get("results", []))
            after = (body.get("paging") or {}).get("next", {}).get("after")
            if not after:
                break
        else:
            raise PublishError(
                f"hubspot: list {audience} has more than "
                f"{MAX_MEMBERSHIP_PAGES * MEMBERSHIP_PAGE} members; stopped paging"
            )
        return list(self._pipelined(chunks(record_ids, self._batch_size), self._emails_of_records))

    def _emails_of_records(self, record_ids: Sequence[str]) -> list[str]:
        what = f"read emails of {len(record_ids)} contacts"
        body = self._body(
            self._call(
                "POST",
                "/crm/v3/objects/contacts/batch/read",
                json={
                    "inputs": [{"id": rid} for rid in record_ids],
                    "properties": ["email"],
                    "propertiesWithHistory": [],
                },
                ok=(200, 207),  # a contact deleted meanwhile is named in errors[]
                what=what,
            ),
            what,
        )
        return [
            str(r["properties"]["email"])
            for r in body.get("results", [])
            if isinstance(r, dict) and (r.get("properties") or {}).get("email")
        ]

    def _read_opt_outs(self, emails: Sequence[str]) -> list[Suppression]:
        """Both kinds of opt-out of ``emails``, read eagerly (this runs in a pool thread)."""
        found: list[Suppression] = []
        what = f"read subscription statuses of {len(emails)} contacts"
        statuses = self._body(
            self._call(
                "POST",
                "/communication-preferences/v4/statuses/batch/read",
                params={"channel": "EMAIL"},
                json={"inputs": list(emails)},
                ok=(200, 207),
                what=what,
            ),
            what,
        )
        for result in statuses.get("results", []):
            for status in result.get("statuses", []):
                if (
                    status.get("subscriptionId") == self._subscription_id
                    and status.get("status") == "UNSUBSCRIBED"
                ):
                    found.extend(_suppression(status, f"subscription:{self._subscription_id}"))
        what = f"read opt-outs of all email of {len(emails)} contacts"
        wide = self._body(
            self._call(
                "POST",
                "/communication-preferences/v4/statuses/batch/unsubscribe-all/read",
                params={"channel": "EMAIL"},
                json={"inputs": list(emails)},
                ok=(200, 207),
                what=what,
            ),
            what,
        )
        for result in wide.get("results", []):
            for status in result.get("wideStatuses", []):
                if status.get("status") == "UNSUBSCRIBED":
                    found.extend(_suppression(status, "unsubscribe-all"))
        return found
