"""The CRM stand-in's contact store: loading contacts, modification times, and the
helpers tests use to add, change or archive contacts while a client pages.
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from infra.sandbox._http import StandInServer
from infra.sandbox.crm.wire import _Fault, _hubspot_string, _id_key, _parse_iso_millis
from infra.sandbox.generate import iso_millis


class CrmStore(StandInServer):
    """The contact store; the mixins in this package act on it."""

    def __init__(
        self,
        contacts: list[dict[str, Any]],
        *,
        client_id: str = "demo-client",
        client_secret: str = "demo-secret",
        token_ttl: float = 1800,
        host: str = "127.0.0.1",
        port: int = 0,
        requests_per_second: float | None = None,
    ) -> None:
        super().__init__(host=host, port=port)
        if requests_per_second is not None and requests_per_second <= 0:
            raise ValueError(f"requests_per_second must be positive, got {requests_per_second}")
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.requests_per_second = requests_per_second
        self.token_requests = 0
        self._lock = threading.RLock()
        self._contacts: dict[str, dict[str, Any]] = {}
        self._tokens: dict[str, float] = {}
        self._faults: deque[_Fault] = deque()
        self._recent: deque[float] = deque()
        self.search_pages = 0
        self.on_search_page: Callable[[int, dict[str, Any]], None] | None = None
        """Called after each search page is computed, before it is sent, with the page's
        number (from 1) and the request body: a test's hook to change contacts "between two
        pages" of a client's run."""
        for index, contact in enumerate(contacts):
            self._load(contact, index)

    # -- store ------------------------------------------------------------------------------
    def _load(self, contact: Any, index: int) -> None:
        """Validate and store one input contact (normalising the always-present props)."""
        if not isinstance(contact, dict) or not isinstance(contact.get("properties"), dict):
            raise ValueError(f"contacts[{index}] must be an object with a 'properties' object")
        contact_id = str(contact.get("id", "")).strip()
        if not contact_id:
            raise ValueError(f"contacts[{index}] has no 'id'")
        if contact_id in self._contacts:
            raise ValueError(f"contacts[{index}] repeats id {contact_id!r}")
        stored = copy.deepcopy(contact)
        props = stored["properties"]
        stored["id"] = contact_id
        stored.setdefault("archived", False)
        props["hs_object_id"] = contact_id
        props.setdefault("lastmodifieddate", stored.get("updatedAt"))
        props.setdefault("createdate", stored.get("createdAt"))
        stored.setdefault("updatedAt", props["lastmodifieddate"])
        stored.setdefault("createdAt", props["createdate"])
        self._contacts[contact_id] = stored

    def _next_modification_time(self) -> datetime:
        """Wall-clock now, but never earlier than 1 ms after the newest lastmodifieddate."""
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        stamps = [c["properties"].get("lastmodifieddate") for c in self._contacts.values()]
        latest = max((_parse_iso_millis(s) for s in stamps if s), default=None)
        if latest is None:
            return now
        floor = datetime.fromtimestamp(latest / 1000, UTC) + timedelta(milliseconds=1)
        return max(now, floor)

    def upsert_contact(
        self,
        properties: Mapping[str, Any],
        *,
        id: str | None = None,
        modified_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Create or update a contact and bump its lastmodifieddate; returns a copy.

        With ``id=None`` a new contact gets the next numeric id. ``modified_at`` defaults to
        now, but never earlier than just after the newest lastmodifieddate in the store, so an
        incremental pull with a ``GTE`` watermark always sees the change. Values are coerced
        to HubSpot strings (``True`` -> ``"true"``).
        """
        with self._lock:
            stamp = iso_millis(modified_at or self._next_modification_time())
            contact_id = id if id is not None else self._next_id()
            contact = self._contacts.get(contact_id)
            if contact is None:
                contact = {
                    "id": contact_id,
                    "properties": {"hs_object_id": contact_id, "createdate": stamp},
                    "createdAt": stamp,
                    "archived": False,
                }
                self._contacts[contact_id] = contact
            contact["properties"].update({k: _hubspot_string(v) for k, v in properties.items()})
            contact["properties"].update(hs_object_id=contact_id, lastmodifieddate=stamp)
            contact["updatedAt"] = stamp
            return copy.deepcopy(contact)

    def archive_contact(self, contact_id: str) -> None:
        """Archive a contact (it disappears from search and from ``archived=false`` lists)."""
        with self._lock:
            if contact_id not in self._contacts:
                raise KeyError(f"CRM stand-in has no contact with id {contact_id!r}")
            stamp = iso_millis(self._next_modification_time())
            contact = self._contacts[contact_id]
            contact.update(archived=True, archivedAt=stamp, updatedAt=stamp)

    def contacts(self) -> list[dict[str, Any]]:
        """A deep copy of every stored contact, in id order."""
        with self._lock:
            return [copy.deepcopy(self._contacts[k]) for k in self._sorted_ids()]

    def _next_id(self) -> str:
        numeric = [int(k) for k in self._contacts if k.isdigit()]
        return str(max(numeric, default=1000) + 1)

    def _sorted_ids(self) -> list[str]:
        return sorted(self._contacts, key=_id_key)
