"""The state every part of the HubSpot stand-in shares (contacts, properties, lists,
statuses, rate windows, faults) and the helpers that seed it.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Iterable

from infra.sandbox._http import StandInServer
from infra.sandbox.hubspot_marketing.records import (
    Exchange,
    _Contact,
    _default_properties,
    _Fault,
    _List,
    _Property,
    _Status,
)
from infra.sandbox.hubspot_marketing.wire import (
    _LIST_ID,
    DEFAULT_BURST,
    DEFAULT_DAILY_LIMIT,
    DEFAULT_PROPERTY_GROUP,
    DEFAULT_SUBSCRIPTION_ID,
    DEFAULT_WINDOW_SECONDS,
    iso_now,
)


class HubSpotMarketingState(StandInServer):
    """The portal's state; the mixins in this package act on it."""

    def __init__(
        self,
        *,
        token: str = "demo-hubspot-token",
        lists: Iterable[str] = (),
        subscription_ids: Iterable[int] = (DEFAULT_SUBSCRIPTION_ID,),
        burst: int = DEFAULT_BURST,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        daily_limit: int = DEFAULT_DAILY_LIMIT,
        shuffle_seed: int = 7,
        response_delay: float = 0.0,
        record_exchanges: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        if burst < 1 or window_seconds <= 0 or daily_limit < 1:
            raise ValueError("burst and daily_limit must be >= 1 and window_seconds > 0")
        self.token = token
        self.burst = burst
        self.window_seconds = window_seconds
        self.daily_limit = daily_limit
        self.response_delay = response_delay
        self.record_exchanges = record_exchanges
        self.exchanges: list[Exchange] = []
        self.rate_limited = 0
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.RLock()
        self._random = random.Random(shuffle_seed)
        self._window: deque[float] = deque()
        self._daily_used = 0
        self._faults: deque[_Fault] = deque()
        self._refusals: dict[str, int] = {}
        self._properties = _default_properties()
        self._contacts: dict[str, _Contact] = {}
        self._by_email: dict[str, str] = {}
        self._next_contact_id = 1001
        self._next_list_id = 1
        self._lists: dict[str, _List] = {}
        self._blocklist: set[str] = set()
        self._definitions = {int(s): iso_now() for s in subscription_ids}
        self._statuses: dict[str, dict[int, _Status]] = {}
        self._opted_out_of_all: dict[str, str] = {}
        for list_id in lists:
            self.add_list(list_id)

    # -- test helpers -------------------------------------------------------------------------
    def add_list(
        self, list_id: str, *, name: str | None = None, processing: str = "MANUAL"
    ) -> None:
        """Create a list with a given id (no-op if it exists)."""
        if not _LIST_ID.match(list_id):
            raise ValueError(f"HubSpot list ids are positive integers as strings, got {list_id!r}")
        with self._lock:
            if list_id not in self._lists:
                self._lists[list_id] = _List(list_id, name or f"list {list_id}", processing)
                self._next_list_id = max(self._next_list_id, int(list_id) + 1)

    @property
    def list_ids(self) -> list[str]:
        """Ids of all lists, in creation order."""
        with self._lock:
            return list(self._lists)

    def add_property(
        self, name: str, type_: str, field_type: str, *, read_only: bool = False
    ) -> None:
        """Create a contact property directly (as someone in the HubSpot UI would)."""
        with self._lock:
            self._properties[name] = _Property(
                name, name, type_, field_type, DEFAULT_PROPERTY_GROUP, read_only=read_only
            )
