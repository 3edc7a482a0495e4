"""The orders sample: rows for people and a few guests (messy emails, unusable or negative
amounts, late updates), and the SQLite ``orders`` table they are written to."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from random import Random

from infra.sandbox.sample.common import (
    DOMAINS,
    ORDER_CATEGORIES,
    REFERENCE_TIME,
    _before,
    _between,
    _messy_email,
    _Person,
    iso_seconds,
)

ORDER_WINDOW_DAYS = 365
CURRENCIES = ("EUR", "USD", "GBP")
CURRENCY_WEIGHTS = (80, 12, 8)
ORDER_COLUMNS = (
    "order_id",
    "customer_email",
    "amount",
    "currency",
    "category",
    "status",
    "created_at",
    "updated_at",
)


def _order_count(rng: Random) -> int:
    """Orders per person: mean ~1.5, many zero, a few with 10+."""
    roll = rng.random()
    if roll < 0.40:
        return 0
    if roll < 0.68:
        return 1
    if roll < 0.82:
        return 2
    if roll < 0.94:
        return rng.randint(3, 5)
    if roll < 0.985:
        return rng.randint(6, 9)
    return rng.randint(10, 14)


def _amount(rng: Random) -> str:
    """An amount as text; ~1 % are unusable ("n/a") or negative."""
    roll = rng.random()
    if roll < 0.005:
        return "n/a"
    if roll < 0.01:
        return f"-{rng.uniform(1, 50):.2f}"
    return f"{rng.uniform(4.5, 320):.2f}"


def _order(rng: Random, email: str) -> dict[str, str]:
    """One order row (without order_id); ~10 % are late-updated."""
    created = _before(rng, REFERENCE_TIME, max_days=ORDER_WINDOW_DAYS, min_seconds=3600)
    created = created.replace(microsecond=0)
    status, updated = rng.choice(("paid", "shipped", "delivered")), created
    if rng.random() < 0.10:
        status = rng.choice(("shipped", "delivered", "refunded", "cancelled"))
        latest = min(REFERENCE_TIME - timedelta(seconds=1), created + timedelta(days=20))
        updated = _between(rng, created + timedelta(hours=1), latest).replace(microsecond=0)
    return {
        "customer_email": email,
        "amount": _amount(rng),
        "currency": rng.choices(CURRENCIES, CURRENCY_WEIGHTS)[0],
        "category": rng.choice(ORDER_CATEGORIES),
        "status": status,
        "created_at": iso_seconds(created),
        "updated_at": iso_seconds(updated),
    }


def build_orders(rng: Random, people: Sequence[_Person]) -> list[dict[str, str]]:
    """Orders for people with a valid email, plus ~2 % from guests not in the CRM."""
    orders: list[dict[str, str]] = []
    for person in people:
        if person.email is None:
            continue
        for _ in range(_order_count(rng)):
            email = _messy_email(rng, person.email, messy_share=0.5)
            orders.append(_order(rng, email))
    for guest in range(max(1, round(len(orders) * 0.02))):
        email = _messy_email(rng, f"guest{guest}@{rng.choice(DOMAINS)}", messy_share=0.3)
        orders.append(_order(rng, email))
    if len(orders) >= 10:  # make sure the bad-amount cases exist even in small samples
        orders[rng.randrange(len(orders))]["amount"] = "n/a"
        orders[rng.randrange(len(orders))]["amount"] = "-12.50"
    orders.sort(key=lambda row: (row["created_at"], row["customer_email"], row["amount"]))
    return [{"order_id": f"ord_{n:07d}", **row} for n, row in enumerate(orders, start=1)]


def write_orders_db(path: Path, orders: Sequence[dict[str, str]]) -> None:
    """(Re)create the SQLite ``orders`` table at ``path``."""
    path.unlink(missing_ok=True)
    connection = sqlite3.connect(path)
    try:
        with connection:
            connection.execute(
                "CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer_email TEXT, "
                "amount TEXT, currency TEXT, category TEXT, status TEXT, created_at TEXT, "
                "updated_at TEXT)"
            )
            connection.executemany(
                f"INSERT INTO orders VALUES ({', '.join('?' * len(ORDER_COLUMNS))})",
                [tuple(row[col] for col in ORDER_COLUMNS) for row in orders],
            )
    finally:
        connection.close()
