"""Small pieces every platform adapter needs on the wire: fixed-size batches and timestamps."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TypeVar

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in order, ``size`` at a time (the last chunk may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def parse_timestamp(value: object) -> datetime | None:
    """An ISO 8601 timestamp from a platform (``Z`` or an offset; none means UTC), else None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
