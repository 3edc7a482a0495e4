"""A proactive client-side request budget: requests per second and max concurrency per source.

Reacting to 429s alone wastes requests and invites penalty boxes; a run should stay under the
documented limit on its own (docs/platforms.md, *Rate budgets*). The rate half is a sliding-window
log from ``pyrate-limiter`` (the same shape as the vendors' "N requests per rolling second"), the
concurrency half a bounded semaphore. The budget counts the seconds callers spent waiting on it, so
a run can report how much of its wall time the budget cost.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyrate_limiter import Limiter, Rate

# pyrate-limiter sleeps this much longer than the bucket asks, so a request never lands on
# the exact edge of the server's window (clocks and network add jitter).
WINDOW_SAFETY_MS = 50


@dataclass(frozen=True)
class BudgetStats:
    """What the budget did so far."""

    requests: int
    waited_seconds: float
    max_in_flight: int


def _rate(requests_per_second: float) -> Rate:
    """A whole number per second allows that burst per rolling second; fractions are spaced."""
    if requests_per_second <= 0:
        raise ValueError(f"requests_per_second must be positive, got {requests_per_second}")
    if float(requests_per_second).is_integer():
        return Rate(int(requests_per_second), 1000)
    return Rate(1, math.ceil(1000 / requests_per_second))


class RateBudget:
    """Requests-per-second and concurrency budget shared by every request of one source.

    Use :meth:`slot` around each request: it waits for a free concurrency slot and for a rate
    token, counts the wait, and releases the slot when the request is done.
    """

    def __init__(
        self,
        *,
        requests_per_second: float | None = None,
        max_concurrency: int | None = None,
        name: str = "source",
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.name = name
        self.requests_per_second = requests_per_second
        self.max_concurrency = max_concurrency
        self._limiter = (
            Limiter(_rate(requests_per_second), buffer_ms=WINDOW_SAFETY_MS)
            if requests_per_second is not None
            else None
        )
        self._slots = (
            threading.BoundedSemaphore(max_concurrency) if max_concurrency is not None else None
        )
        self._lock = threading.Lock()
        self._requests = 0
        self._waited = 0.0
        self._in_flight = 0
        self._max_in_flight = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one request's worth of budget for the duration of the block."""
        started = time.monotonic()
        if self._slots is not None:
            self._slots.acquire()
        try:
            if self._limiter is not None:
                self._limiter.try_acquire(self.name, blocking=True)
            waited = time.monotonic() - started
            with self._lock:
                self._requests += 1
                self._waited += waited
                self._in_flight += 1
                self._max_in_flight = max(self._max_in_flight, self._in_flight)
            try:
                yield
            finally:
                with self._lock:
                    self._in_flight -= 1
        finally:
            if self._slots is not None:
                self._slots.release()

    @property
    def stats(self) -> BudgetStats:
        with self._lock:
            return BudgetStats(self._requests, self._waited, self._max_in_flight)

    @property
    def waited_seconds(self) -> float:
        """Total seconds callers spent waiting for a slot or a rate token."""
        return self.stats.waited_seconds

    def close(self) -> None:
        """Stop the limiter's background leak task."""
        if self._limiter is not None:
            self._limiter.close()
