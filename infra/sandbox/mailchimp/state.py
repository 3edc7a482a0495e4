"""The state every part of the Mailchimp stand-in shares (audiences, tags, merge fields,
faults, the member log) and the lookups over it.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from infra.sandbox._http import StandInServer
from infra.sandbox.mailchimp.records import _Fault, _Member
from infra.sandbox.mailchimp.wire import _not_found, subscriber_hash
from infra.sandbox.mailchimp_merge import MergeField, default_merge_fields


class MailchimpState(StandInServer):
    """The account's state; the mixins in this package act on it."""

    def __init__(
        self,
        *,
        api_key: str = "demo-key-us1",
        lists: Iterable[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        max_connections: int = 10,
        response_delay: float = 0.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__(host=host, port=port)
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.api_key = api_key
        self.max_connections = max_connections
        self.response_delay = response_delay
        self.max_in_flight = 0
        self.rejected_over_ceiling = 0
        """Requests answered 429 because ``max_connections`` were already in flight."""
        self._lock = threading.RLock()
        self._lists: dict[str, dict[str, _Member]] = {}
        self._forgotten: dict[str, set[str]] = {}
        self._tag_ids: dict[str, int] = {}
        self._faults: deque[_Fault] = deque()
        self._refusals: Counter[tuple[str, str]] = Counter()
        self._in_flight = 0
        self._member_log: list[tuple[str, str, str | None]] = []
        self._merge_fields: dict[str, dict[str, MergeField]] = {}
        self._seq = 0
        self._clock = clock or (lambda: datetime.now(UTC))
        self.on_members_page: Callable[[str, int], None] | None = None
        for list_id in lists:
            self.add_list(list_id)

    # -- introspection and test helpers -------------------------------------------------------
    def add_list(self, list_id: str) -> None:
        """Create an empty audience (no-op if it exists)."""
        if not list_id or "/" in list_id:
            raise ValueError(f"list id {list_id!r} must be non-empty and contain no '/'")
        with self._lock:
            self._lists.setdefault(list_id, {})
            self._forgotten.setdefault(list_id, set())
            self._merge_fields.setdefault(list_id, default_merge_fields())

    def _existing(self, list_id: str, email: str) -> _Member:
        member = self._store(list_id).get(subscriber_hash(email))
        if member is None:
            raise KeyError(f"{email!r} is not a member of Mailchimp list {list_id!r}")
        return member

    def _stamp(self) -> str:
        return self._clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")

    def _store(self, list_id: str) -> dict[str, _Member]:
        store = self._lists.get(list_id)
        if store is None:
            raise _not_found(f"The requested resource could not be found: list {list_id!r}.")
        return store

    def _wire(self, list_id: str, member: _Member) -> dict[str, Any]:
        return member.to_wire(list_id, self._tag_ids)
