"""The state every part of the Klaviyo stand-in shares: profiles, lists, jobs, pending work,
faults and rate windows, with the id and lookup helpers over them.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from infra.sandbox._http import StandInServer
from infra.sandbox.klaviyo.records import (
    RecordedExchange,
    _Fault,
    _ImportJob,
    _List,
    _Profile,
    _Window,
)
from infra.sandbox.klaviyo.wire import _CROCKFORD, RATE_LIMITS, _not_found


class KlaviyoState(StandInServer):
    """Klaviyo's account state; the mixins in this package act on it."""

    def __init__(
        self,
        *,
        api_key: str = "pk_demo_klaviyo",
        lists: Iterable[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        polls_to_finish: int = 2,
        rate_limits: Mapping[str, tuple[int, int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__(host=host, port=port)
        if polls_to_finish < 1:
            raise ValueError(f"polls_to_finish must be at least 1, got {polls_to_finish}")
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.time_scale = time_scale
        self.api_key = api_key
        self.polls_to_finish = polls_to_finish
        self.rate_limits = {**RATE_LIMITS, **(rate_limits or {})}
        self.exchanges: list[RecordedExchange] = []
        self.rate_limited = 0
        self._clock = clock
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._profiles: dict[str, _Profile] = {}
        self._email_index: dict[str, str] = {}
        self._lists: dict[str, _List] = {}
        self._jobs: dict[str, _ImportJob] = {}
        self._pending: deque[Callable[[], None]] = deque()
        self._faults: deque[_Fault] = deque()
        self._job_failures: deque[str] = deque()
        self._import_rejections: dict[str, tuple[str, int | None]] = {}
        self._windows: dict[str, _Window] = {}
        self.deletions: list[str] = []
        for list_id in lists:
            self.add_list(list_id)

    # -- test helpers ----------------------------------------------------------------------------
    def add_list(self, list_id: str, *, name: str | None = None) -> None:
        """Create a list (no-op when it exists)."""
        if not list_id or "/" in list_id:
            raise ValueError(f"list id {list_id!r} must be non-empty and contain no '/'")
        with self._lock:
            self._lists.setdefault(list_id, _List(list_id, name or list_id))

    @property
    def list_ids(self) -> list[str]:
        with self._lock:
            return list(self._lists)

    def settle(self) -> None:
        """Let every accepted consent/deletion job take effect (the platform catching up)."""
        with self._lock:
            while self._pending:
                self._pending.popleft()()

    # -- ids and lookups -------------------------------------------------------------------------
    def _new_id(self) -> str:
        number = next(self._ids)
        digits = "".join(_CROCKFORD[(number >> (5 * i)) & 31] for i in reversed(range(16)))
        return "01K" + "0" * 7 + digits

    def _by_email(self, email: str) -> _Profile | None:
        profile_id = self._email_index.get(email.strip().lower())
        return None if profile_id is None else self._profiles.get(profile_id)

    def _find_or_create(self, email: str) -> _Profile:
        found = self._by_email(email)
        if found is None:
            found = _Profile(self._new_id(), email=email.strip())
            self._profiles[found.id] = found
            self._email_index[email.strip().lower()] = found.id
        return found

    def _list(self, list_id: str) -> _List:
        found = self._lists.get(list_id)
        if found is None:
            raise _not_found(f"A list with id {list_id!r} does not exist.")
        return found
