"""How many platform batches a publish sends at once, and sending one window of them.

A publish sends its plan in *windows* (:func:`tasks.core.sync.send_windows`): the window's
intent is committed to ``ops/sync_ledger`` in one commit, its batches go out together on at most
``max_connections`` threads (the platform's documented ceiling, :class:`Limits`), and every
contact's result is committed in one commit once the whole window has an answer. Two ledger
commits per window instead of two per batch, and the platform's connections all in use.

The adapters keep the *rate* ceilings themselves (HubSpot's rolling 10-second budget, Klaviyo's
per-second and per-minute limits, Mailchimp's connection cap shared by every call of one
adapter), so several engine threads sharing one adapter stay within them together.

The window is also the crash bound: a run killed mid-window leaves at most that window's
batches sent but not recorded, and the next run sends them again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass
from typing import Generic, TypeVar

from tasks.connectors.destinations.protocol import Limits

ROUNDS_PER_WINDOW = 8
"""Batches each connection sends per default window. More rounds spread a window's ledger
commit over more sending (a Delta MERGE of the ledger costs about the same for 2,000 rows as
for 40,000: 0.4-1.5 s on a busy machine); fewer keep the crash bound small. Eight rounds of
Mailchimp's 10 connections are 80 batches of 500 (40,000 contacts, about 16 s of batch calls);
of HubSpot's, 80 batches of 100 (160 requests: 16 s of its 10-second burst budget)."""

B = TypeVar("B")
R = TypeVar("R")


def window_size(limits: Limits, configured: int | None = None) -> int:
    """Batches per window: ``configured`` (``publish.window_batches``) or
    :data:`ROUNDS_PER_WINDOW` rounds of the platform's connections."""
    if configured is not None:
        if configured < 1:
            raise ValueError(f"window_batches must be at least 1, got {configured}")
        return configured
    return max(1, limits.max_connections) * ROUNDS_PER_WINDOW


def in_flight(limits: Limits, window: int) -> int:
    """Batches sent at the same time: the platform's connection ceiling, at most the window."""
    return max(1, min(limits.max_connections, window))


@dataclass(frozen=True)
class WindowOutcome(Generic[B, R]):
    """Each batch's answer, in window order, for the batches that got one; and the first
    error a batch raised (the window is still awaited to the end, so every answer the platform
    gave is recorded before the error goes up)."""

    answered: list[tuple[B, R]]
    failure: BaseException | None


def send_window(
    pool: Executor, batches: Sequence[B], send: Callable[[B], R]
) -> WindowOutcome[B, R]:
    """``send`` every batch on ``pool`` and wait for all of them."""
    futures: list[Future[R]] = [pool.submit(send, batch) for batch in batches]
    wait(futures)
    answered: list[tuple[B, R]] = []
    failure: BaseException | None = None
    for batch, future in zip(batches, futures, strict=True):
        error = future.exception()
        if error is None:
            answered.append((batch, future.result()))
        elif failure is None:
            failure = error
    return WindowOutcome(answered, failure)
