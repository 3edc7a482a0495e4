"""The send-budget planner: how many API calls a publish will make, and how long it must take.

Before anything is sent, each audience's plan (creates, updates, removals, unsubscribes) is
turned into platform requests by the destination adapter itself
(:meth:`tasks.connectors.destinations.protocol.Destination.planned_calls`), each request tagged
with the documented rate budget it draws on (:class:`RateBudget`). This module adds them up and
gives the *minimum* time the documented limits allow:

- a budget of ``requests`` per ``seconds`` window lets ``n`` calls finish no sooner than
  ``(ceil(n / requests) - 1) * seconds`` (the first window's calls leave at once; every further
  window-full waits a window);
- a budget with several windows (Klaviyo: a burst per second and a steady rate per minute) is
  as slow as its slowest window;
- budgets add up, because a publish sends one batch after another.

The figure is a floor, not a forecast: it ignores network time, retries, 429s caused by other
apps on the same account and, for Klaviyo, how long an import job takes to process (the
adapter polls it; the planner counts one poll per job).

Example:
    >>> hubspot = RateBudget("hubspot", (RateWindow(100, 10.0),))
    >>> hubspot.minimum_seconds(2_000)
    190.0
    >>> plan = estimate([CallCount("batch upsert", 1_000, hubspot),
    ...                  CallCount("list add", 1_000, hubspot)])
    >>> plan.calls, plan.seconds
    (2000, 190.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator


@dataclass(frozen=True)
class RateWindow:
    """At most ``requests`` requests in any ``seconds`` (a documented platform limit)."""

    requests: int
    seconds: float

    def __post_init__(self) -> None:
        if self.requests < 1 or self.seconds <= 0:
            raise ValueError(f"a rate window needs requests >= 1 and seconds > 0, got {self}")

    def minimum_seconds(self, calls: int) -> float:
        if calls <= 0:
            return 0.0
        return float((math.ceil(calls / self.requests) - 1) * self.seconds)

    def describe(self) -> str:
        if self.seconds == 1:
            return f"{self.requests:,}/s"
        if self.seconds == 60:
            return f"{self.requests:,}/min"
        if self.seconds == 86_400:
            return f"{self.requests:,}/day"
        return f"{self.requests:,} per {self.seconds:g} s"


@dataclass(frozen=True)
class RateBudget:
    """One pool of requests a platform limits together (a Klaviyo rate class, a HubSpot app)."""

    name: str
    windows: tuple[RateWindow, ...]

    def minimum_seconds(self, calls: int) -> float:
        return max((w.minimum_seconds(calls) for w in self.windows), default=0.0)

    def describe(self) -> str:
        return f"{self.name} ({', '.join(w.describe() for w in self.windows)})"


@dataclass(frozen=True)
class CallCount:
    """``calls`` requests of one kind (``label``), drawing on ``budget``."""

    label: str
    calls: int
    budget: RateBudget


@dataclass(frozen=True)
class SendEstimate:
    """What one publish will cost: calls per kind of request, in total, and the minimum time."""

    by_label: tuple[tuple[str, int], ...]
    calls: int
    seconds: float
    budgets: tuple[str, ...]
    """The rate budgets drawn on, described (``hubspot (100 per 10 s, 250,000/day)``)."""

    def describe(self) -> str:
        """``2,000 calls (batch upsert 1,000, list add 1,000), at least 3 min 10 s``."""
        if self.calls == 0:
            return "no calls"
        parts = ", ".join(f"{label} {n:,}" for label, n in self.by_label if n)
        return f"{self.calls:,} calls ({parts}), at least {format_duration(self.seconds)}"


EMPTY_ESTIMATE = SendEstimate(by_label=(), calls=0, seconds=0.0, budgets=())


def estimate(counts: Iterable[CallCount]) -> SendEstimate:
    """Adds calls up by kind and by budget; the minimum time is the sum over budgets."""
    by_label: dict[str, int] = {}
    by_budget: dict[str, tuple[RateBudget, int]] = {}
    for count in counts:
        if count.calls <= 0:
            continue
        by_label[count.label] = by_label.get(count.label, 0) + count.calls
        budget, calls = by_budget.get(count.budget.name, (count.budget, 0))
        by_budget[count.budget.name] = (budget, calls + count.calls)
    seconds = sum(budget.minimum_seconds(calls) for budget, calls in by_budget.values())
    return SendEstimate(
        by_label=tuple(by_label.items()),
        calls=sum(by_label.values()),
        seconds=float(seconds),
        budgets=tuple(budget.describe() for budget, _ in by_budget.values()),
    )


def combine(estimates: Iterable[SendEstimate]) -> SendEstimate:
    """Several publishes to one destination, one after another: calls and times add up."""
    by_label: dict[str, int] = {}
    seconds = 0.0
    budgets: dict[str, None] = {}
    for e in estimates:
        for label, n in e.by_label:
            by_label[label] = by_label.get(label, 0) + n
        seconds += e.seconds
        budgets.update(dict.fromkeys(e.budgets))
    return SendEstimate(tuple(by_label.items()), sum(by_label.values()), seconds, tuple(budgets))


def format_duration(seconds: float) -> str:
    """``0 s``, ``42 s``, ``3 min 10 s``, ``2 h 05 min``."""
    whole = math.ceil(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, rest = divmod(whole, 3600)
    return f"{hours} h {rest // 60:02d} min"


class SendBudget(BaseModel):
    """A ceiling on one publish: more calls or a longer minimum time holds the audience."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_calls: int | None = Field(
        default=None, ge=1, description="Most API calls one publish may make."
    )
    max_minutes: float | None = Field(
        default=None, gt=0, description="Longest minimum send time (documented limits), minutes."
    )

    @model_validator(mode="after")
    def _some_limit(self) -> SendBudget:
        if self.max_calls is None and self.max_minutes is None:
            raise ValueError("give max_calls, max_minutes or both")
        return self

    def exceeded_by(self, planned: SendEstimate) -> str | None:
        """Why ``planned`` is over this budget (naming the limit), or None."""
        over = []
        if self.max_calls is not None and planned.calls > self.max_calls:
            over.append(f"max_calls {self.max_calls:,}")
        if self.max_minutes is not None and planned.seconds > self.max_minutes * 60:
            over.append(f"max_minutes {self.max_minutes:g}")
        return " and ".join(over) or None
