"""Mailchimp suppression read-back: unsubscribed and cleaned members changed since a cursor."""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx

from tasks.connectors.destinations.mailchimp.client import MAX_PAGES, MailchimpClient
from tasks.connectors.destinations.mailchimp.responses import _json_object
from tasks.connectors.destinations.protocol import Suppression, SuppressionPage, SuppressionStatus
from tasks.connectors.destinations.wire import parse_timestamp
from tasks.errors import PublishError

CLOCK_MARGIN = timedelta(seconds=60)
"""How far before the read's start the returned cursor lies: a change Mailchimp stamps just
before it becomes visible to reads is still picked up by the next read."""
SUPPRESSION_STATUSES: tuple[Literal["unsubscribed", "cleaned"], ...] = ("unsubscribed", "cleaned")
_MEMBER_READ_FIELDS = ",".join(
    [
        "members.id",
        "members.email_address",
        "members.status",
        "members.last_changed",
        "members.unsubscribe_reason",
        "total_items",
    ]
)


class MailchimpSuppressions(MailchimpClient):
    """Members read back by status and ``last_changed``, with overlapping offset pages."""

    def suppressions_since(self, audience: str, since: datetime | None) -> SuppressionPage:
        """Unsubscribed (spam complaints among them) and cleaned (bounced) members whose
        ``last_changed`` is at or after ``since``.

        Each status is read sorted by ``last_changed`` ascending, 1,000 a page. Offset paging
        over a list that changes while it is read shifts: a member edited or archived mid-read
        leaves its place and every later one moves up, so a plain ``offset += count`` would skip
        one. Each page therefore overlaps the previous one, and a page whose first member was
        never seen means the shift outran the overlap: the read steps back and reads again. An
        edited member moves to the end (a later ``last_changed``), where this read or the next
        one finds it. The query asks from one second before ``since`` (Mailchimp does not say
        whether the bound is inclusive), and members before ``since`` are dropped here.

        The cursor is the platform's time (its ``Date`` header) when the read began, less
        :data:`CLOCK_MARGIN`: the next read may return some of these again, never miss one.
        """
        started: datetime | None = None
        found: dict[tuple[str, str], Suppression] = {}
        for status in SUPPRESSION_STATUSES:
            members, server_time = self._read_status(audience, status, since)
            started = started or server_time
            for member in members:
                suppression = _suppression(member, fallback_time=server_time)
                if suppression is not None and (since is None or suppression.occurred_at >= since):
                    found[(suppression.email, suppression.status)] = suppression
        cursor = (started or self._clock()) - CLOCK_MARGIN
        if since is not None:
            cursor = max(cursor, since)
        ordered = sorted(found.values(), key=lambda s: (s.occurred_at, s.email))
        return SuppressionPage(ordered, cursor)

    def _read_status(
        self, audience: str, status: str, since: datetime | None
    ) -> tuple[list[dict[str, Any]], datetime]:
        """Every member with ``status`` changed since ``since``, and the platform's time at the
        first page. Overlapping pages, and a step back whenever a page starts with a member
        never seen (the rows shifted past the overlap)."""
        overlap = max(1, self._page_size // 10)
        seen: dict[str, dict[str, Any]] = {}
        offset = 0
        started: datetime | None = None
        params: dict[str, str | int] = {
            "status": status,
            "sort_field": "last_changed",
            "sort_dir": "ASC",
            "count": self._page_size,
            "fields": _MEMBER_READ_FIELDS,
        }
        if since is not None:
            params["since_last_changed"] = _iso(since - timedelta(seconds=1))
        for _ in range(MAX_PAGES):
            response = self._get(
                f"/3.0/lists/{audience}/members", params={**params, "offset": offset}, what=audience
            )
            started = started or _server_time(response) or self._clock()
            page = _members_of(response, audience)
            if offset > 0 and (not page or str(page[0].get("id")) not in seen):
                # Nothing at the overlap we expected (rows shifted up past it, or the rest
                # of the list moved up entirely): step back a page and read again.
                offset = max(0, offset - (self._page_size - overlap))
                continue
            seen.update((str(m.get("id")), m) for m in page)
            if len(page) < self._page_size:
                return list(seen.values()), started
            offset += self._page_size - overlap
        raise PublishError(
            f"mailchimp list {audience!r}: reading {status} members did not finish within "
            f"{MAX_PAGES} pages (the list keeps changing under the read); nothing was returned"
        )


def _suppression(member: Mapping[str, Any], *, fallback_time: datetime) -> Suppression | None:
    status = member.get("status")
    address = member.get("email_address")
    if not isinstance(address, str) or status not in SUPPRESSION_STATUSES:
        return None
    kind: SuppressionStatus = "cleaned" if status == "cleaned" else "unsubscribed"
    reason = str(member.get("unsubscribe_reason") or "").lower()
    if kind == "unsubscribed" and ("abuse" in reason or "spam" in reason):
        kind = "spam_complaint"
    occurred = _parse_time(member.get("last_changed")) or fallback_time
    return Suppression(address.strip().lower(), kind, occurred, str(member.get("id") or "") or None)


def _members_of(response: httpx.Response, audience: str) -> list[dict[str, Any]]:
    members = _json_object(response, audience).get("members")
    if not isinstance(members, list):
        raise PublishError(f"mailchimp list {audience!r}: members read has no members array")
    return [m for m in members if isinstance(m, dict)]


def _parse_time(value: object) -> datetime | None:
    """Mailchimp's ``last_changed``; the live API sends ``""`` when unset (spec defect)."""
    return parse_timestamp(value.strip()) if isinstance(value, str) else None


def _server_time(response: httpx.Response) -> datetime | None:
    header = response.headers.get("Date")
    if not header:
        return None
    try:
        return email.utils.parsedate_to_datetime(header).astimezone(UTC)
    except (TypeError, ValueError):
        return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
