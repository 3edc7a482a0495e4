"""Klaviyo's documented rate classes and the client-side pacer every request waits on.

The same limits feed the send-budget planner (:data:`RATE_BUDGETS`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pyrate_limiter import Limiter, Rate

from tasks.core.send_budget import RateBudget, RateWindow

# (burst per second, steady per minute) of each rate class, from the operations'
# x-klaviyo-ratelimit; the adapter paces itself to both so it rarely meets a 429.
RATE_CLASSES: dict[str, tuple[int, int]] = {
    "import": (10, 150),  # import job create, job status, import errors
    "consent": (75, 750),  # subscribe / unsubscribe / suppress jobs
    "reads": (75, 750),  # GET /api/profiles, /api/lists, list relationships
    "list_writes": (10, 150),  # POST / DELETE list relationships
    "deletion": (3, 60),  # data privacy deletion jobs
}
RATE_BUDGETS: dict[str, RateBudget] = {
    name: RateBudget(f"klaviyo {name}", (RateWindow(burst, 1.0), RateWindow(steady, 60.0)))
    for name, (burst, steady) in RATE_CLASSES.items()
}
"""The same limits for the send-budget planner."""


class RatePacer:
    """Client-side budget for one rate class: a rolling second and a rolling minute.

    A rolling window is never looser than Klaviyo's fixed ones, so requests paced here stay
    inside both. ``waited`` counts the seconds callers spent waiting.
    """

    def __init__(self, name: str, burst: int, steady: int, *, time_scale: float = 1.0) -> None:
        self.name = name
        second, minute = round(1000 / time_scale), round(60_000 / time_scale)
        self._limiter = Limiter([Rate(burst, second), Rate(steady, minute)], buffer_ms=50)
        self._lock = threading.Lock()
        self.waited = 0.0

    @contextmanager
    def slot(self) -> Iterator[None]:
        started = time.monotonic()
        self._limiter.try_acquire(self.name, blocking=True)
        with self._lock:
            self.waited += time.monotonic() - started
        yield

    def close(self) -> None:
        self._limiter.close()


def rate_class(method: str, path: str) -> str:
    """Which of :data:`RATE_CLASSES` a call counts against."""
    if path.startswith("/api/profile-bulk-import-jobs"):
        return "import"
    if path.startswith(("/api/profile-subscription-", "/api/profile-suppression-")):
        return "consent"
    if path.startswith("/api/data-privacy-deletion-jobs"):
        return "deletion"
    if path.endswith("/relationships/profiles") and method != "GET":
        return "list_writes"
    return "reads"
