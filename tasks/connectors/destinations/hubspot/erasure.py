"""HubSpot erasure: a GDPR delete per person, by email."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from tasks.connectors.destinations.hubspot.client import HubSpotClient
from tasks.connectors.destinations.protocol import ErasureResult
from tasks.errors import PublishError


class HubSpotErasure(HubSpotClient):
    """Privacy erasure (``POST /crm/v3/objects/contacts/gdpr-delete``)."""

    # -- erasure ----------------------------------------------------------------------------------
    def erase(self, emails: Sequence[str]) -> Iterator[ErasureResult]:
        """GDPR-delete each person by email; HubSpot blocklists an address it does not know."""
        yield from self._pipelined(
            ([email] for email in emails), self._erase_one, lambda one: {one[0].strip().lower()}
        )

    def _erase_one(self, one: list[str]) -> list[ErasureResult]:
        email = one[0]
        try:
            self._call(
                "POST",
                "/crm/v3/objects/contacts/gdpr-delete",
                json={"objectId": email, "idProperty": "email"},
                ok=(204,),
                what="GDPR delete",
            )
        except PublishError as exc:
            return [ErasureResult(email, ok=False, detail=str(exc))]
        detail = "gdpr-delete answered 204: contact deleted, address blocked"
        return [ErasureResult(email, ok=True, detail=detail)]
