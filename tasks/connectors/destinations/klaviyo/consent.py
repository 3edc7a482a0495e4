"""Klaviyo consent: opt-outs written (``unsubscribe``) and read back (``suppressions_since``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime

from tasks.connectors.destinations.klaviyo.client import EPOCH, UNSUBSCRIBE_MAX, KlaviyoClient
from tasks.connectors.destinations.klaviyo.payloads import (
    _filter_string,
    _timestamp,
    is_sendable_email,
)
from tasks.connectors.destinations.klaviyo.responses import _failed, _suppressions
from tasks.connectors.destinations.protocol import (
    Member,
    RecordResult,
    Suppression,
    SuppressionPage,
)
from tasks.connectors.destinations.wire import chunks
from tasks.errors import PublishError


class KlaviyoConsent(KlaviyoClient):
    """Subscription delete jobs, and profiles read back by suppression timestamp."""

    # -- unsubscribe -----------------------------------------------------------------------------
    def unsubscribe(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        """Unsubscribe globally from email marketing, 100 profiles per job."""
        for member in members:
            if not is_sendable_email(member.email):
                yield _failed(member, f"{member.email!r} is not an email address Klaviyo accepts")
        sendable = [m for m in members if is_sendable_email(m.email)]
        for chunk in chunks(sendable, UNSUBSCRIBE_MAX):
            yield from self._unsubscribe_job(chunk, split_on_refusal=True)

    def _unsubscribe_job(
        self, chunk: Sequence[Member], *, split_on_refusal: bool
    ) -> Iterator[RecordResult]:
        body = {
            "data": {
                "type": "profile-subscription-bulk-delete-job",
                "attributes": {
                    "profiles": {
                        "data": [
                            {
                                "type": "profile",
                                "attributes": {
                                    "email": m.email,
                                    "subscriptions": {
                                        "email": {"marketing": {"consent": "UNSUBSCRIBED"}}
                                    },
                                },
                            }
                            for m in chunk
                        ]
                    }
                },
            }
        }
        try:
            self._send(
                "POST", "/api/profile-subscription-bulk-delete-jobs", body=body, expect=(202,)
            )
        except PublishError as exc:
            if " answered 400" not in str(exc):
                raise
            if split_on_refusal and len(chunk) > 1:  # find the profile Klaviyo refuses
                for member in chunk:
                    yield from self._unsubscribe_job([member], split_on_refusal=False)
                return
            yield from (_failed(m, str(exc)) for m in chunk)
            return
        yield from (RecordResult(m.contact_key, ok=True) for m in chunk)

    # -- suppressions ----------------------------------------------------------------------------
    def suppressions_since(self, audience: str, since: datetime | None) -> SuppressionPage:
        """Global suppressions and this list's suppressions at or after ``since``."""
        floor = since if since is not None else EPOCH
        stamp = _timestamp(floor)
        prefix = "subscriptions.email.marketing"
        queries = [
            f"greater-or-equal({prefix}.suppression.timestamp,{stamp})",
            f"and(equals({prefix}.list_suppressions.list_id,{_filter_string(audience)}),"
            f"greater-or-equal({prefix}.list_suppressions.timestamp,{stamp}))",
        ]
        found: dict[tuple[str, str, datetime], Suppression] = {}
        for query in queries:
            params = {
                "filter": query,
                "additional-fields[profile]": "subscriptions",
                "fields[profile]": "email,subscriptions",
                "page[size]": str(self._page_size),
            }
            for item in self._pages("/api/profiles", params):
                for suppression in _suppressions(item, audience, floor):
                    key = (suppression.email, suppression.status, suppression.occurred_at)
                    found[key] = suppression
        ordered = sorted(found.values(), key=lambda s: (s.occurred_at, s.email))
        cursor = max([floor, *(s.occurred_at for s in ordered)])
        return SuppressionPage(suppressions=ordered, cursor=cursor)
