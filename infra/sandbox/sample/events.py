"""The events sample: web and email events for people and anonymous-only visitors, split into
NDJSON drop files with ~3 % of events delivered again in a later file."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from random import Random
from typing import Any

from infra.sandbox.sample.common import (
    ORDER_CATEGORIES,
    REFERENCE_TIME,
    _before,
    _messy_email,
    _Person,
    iso_millis,
)

EVENT_WINDOW_DAYS = 60
EVENTS_PER_FILE = 2000
MIN_EVENT_FILES = 3
EVENT_TYPES = ("page_view", "click", "add_to_cart", "email_open")
EVENT_TYPE_WEIGHTS = (55, 25, 10, 10)
EVENT_FIELDS = ("event_id", "user_email", "anonymous_id", "event_type", "occurred_at", "url")


def _event_url(rng: Random, event_type: str) -> str:
    """A plausible URL for the event type."""
    category = rng.choice(ORDER_CATEGORIES)
    if event_type == "email_open":
        return f"https://email.example.com/o/campaign-{rng.randint(1, 40)}"
    if event_type == "add_to_cart":
        return f"https://shop.example.com/cart/add?sku={category[:3].upper()}-{rng.randint(1, 999)}"
    suffix = "?ref=newsletter" if event_type == "click" else ""
    return f"https://shop.example.com/{category}/item-{rng.randint(1, 500)}{suffix}"


def _event(rng: Random, email: str | None, anonymous_id: str) -> dict[str, Any]:
    """One event; the email is sometimes recased and sometimes null (logged-out visit)."""
    event_type = rng.choices(EVENT_TYPES, EVENT_TYPE_WEIGHTS)[0]
    user_email = None
    if email is not None and rng.random() >= 0.15:
        user_email = _messy_email(rng, email, messy_share=0.2)
    occurred = _before(rng, REFERENCE_TIME, max_days=EVENT_WINDOW_DAYS)
    return {
        "event_id": f"evt_{rng.getrandbits(80):020x}",
        "user_email": user_email,
        "anonymous_id": anonymous_id,
        "event_type": event_type,
        "occurred_at": iso_millis(occurred),
        "url": _event_url(rng, event_type),
    }


def _anonymous_id(rng: Random) -> str:
    """A browser/device id such as ``anon_1a2b3c4d5e6f``."""
    return f"anon_{rng.getrandbits(48):012x}"


def build_events(rng: Random, people: Sequence[_Person], contacts: int) -> list[dict[str, Any]]:
    """~5 events per contact, sorted by time; includes anonymous-only visitors."""
    events: list[dict[str, Any]] = []
    for person in people:
        person.anonymous_ids = [_anonymous_id(rng) for _ in range(rng.randint(1, 2))]
        for _ in range(rng.randint(0, 10)):
            events.append(_event(rng, person.email, rng.choice(person.anonymous_ids)))
    while len(events) < 5 * contacts:
        events.append(_event(rng, None, _anonymous_id(rng)))
    events.sort(key=lambda event: (event["occurred_at"], event["event_id"]))
    return events


def split_event_files(rng: Random, events: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split into files and re-deliver ~3 % of events verbatim in a later file."""
    file_count = max(MIN_EVENT_FILES, math.ceil(len(events) / EVENTS_PER_FILE))
    size = max(1, math.ceil(len(events) / file_count))
    files = [list(events[i * size : (i + 1) * size]) for i in range(file_count)]
    redeliveries: list[list[dict[str, Any]]] = [[] for _ in files]
    for index, chunk in enumerate(files[:-1]):
        for event in chunk:
            if rng.random() < 0.03:
                redeliveries[rng.randint(index + 1, file_count - 1)].append(dict(event))
    for chunk, extra in zip(files, redeliveries, strict=True):
        for event in extra:
            chunk.insert(rng.randint(0, len(chunk)), event)
    return files


def write_event_files(directory: Path, files: Sequence[Sequence[dict[str, Any]]]) -> list[Path]:
    """Write ``events-0001.ndjson`` ... (one JSON object per line)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("events-*.ndjson"):
        stale.unlink()
    paths = []
    for number, chunk in enumerate(files, start=1):
        path = directory / f"events-{number:04d}.ndjson"
        lines = [json.dumps(event, ensure_ascii=False) for event in chunk]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        paths.append(path)
    return paths
