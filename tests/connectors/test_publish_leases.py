"""Publish leases on real Delta tables (local directory and the S3 test server)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from tasks.connectors.lake import Lake
from tasks.connectors.leases import Lease, LeaseLostError, LeaseState, LeaseStore, lease_key

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
KEY = lease_key("mailchimp", "list-a")


def test_a_claimed_list_blocks_others_until_released_or_expired(lake: Lake) -> None:
    first, second = LeaseStore(lake), LeaseStore(lake)  # two processes' views of one lake
    held = first.try_claim(KEY, "run-1", ttl=60, now=T0)
    assert isinstance(held, Lease) and held.seq == 1

    blocked = second.try_claim(KEY, "run-2", ttl=60, now=T0 + timedelta(seconds=30))
    assert isinstance(blocked, LeaseState) and blocked.holder == "run-1"
    assert "claimed by run-1 until 2026-12-01 09:01:00 UTC" in blocked.describe()
    # Another list is independent.
    other = second.try_claim(lease_key("mailchimp", "list-b"), "run-2", ttl=60, now=T0)
    assert isinstance(other, Lease)

    assert first.release(held, now=T0 + timedelta(seconds=40))
    after_release = second.try_claim(KEY, "run-2", ttl=60, now=T0 + timedelta(seconds=41))
    assert isinstance(after_release, Lease) and after_release.holder == "run-2"

    # run-2 crashes: its claim blocks run-3 only until it expires.
    early = first.try_claim(KEY, "run-3", ttl=60, now=T0 + timedelta(seconds=100))
    assert isinstance(early, LeaseState)
    late = first.try_claim(KEY, "run-3", ttl=60, now=T0 + timedelta(seconds=102))
    assert isinstance(late, Lease) and late.holder == "run-3"


def test_a_holder_whose_claim_was_taken_over_cannot_renew_or_release(lake: Lake) -> None:
    slow, fast = LeaseStore(lake), LeaseStore(lake)
    mine = slow.try_claim(KEY, "run-slow", ttl=10, now=T0)
    assert isinstance(mine, Lease)
    renewed = slow.renew(mine, ttl=10, now=T0 + timedelta(seconds=5))
    assert renewed.seq == mine.seq + 1 and renewed.expires_at == T0 + timedelta(seconds=15)
    taken = fast.try_claim(KEY, "run-fast", ttl=10, now=T0 + timedelta(seconds=16))
    assert isinstance(taken, Lease)
    with pytest.raises(LeaseLostError, match=r"list-a.*claimed by run-fast"):
        slow.renew(renewed, ttl=10, now=T0 + timedelta(seconds=17))
    assert slow.release(renewed, now=T0 + timedelta(seconds=18)) is False
    current = fast.current(KEY)
    assert current is not None and (current.holder, current.event) == ("run-fast", "claimed")


def test_claims_racing_from_many_threads_have_exactly_one_winner(lake: Lake) -> None:
    """Each thread has its own store (its own Delta snapshot): the commit decides, not a lock."""
    stores = [LeaseStore(lake) for _ in range(4)]
    for store in stores:
        assert store.current(KEY) is None  # every store has read the table before the race
    barrier = threading.Barrier(len(stores))
    results: list[Lease | LeaseState] = []

    def claim(n: int) -> None:
        barrier.wait()
        results.append(stores[n].try_claim(KEY, f"run-{n}", ttl=60, now=T0))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    winners = [r for r in results if isinstance(r, Lease)]
    assert len(results) == len(stores) and len(winners) == 1, results
    assert all(r.holder == winners[0].holder for r in results if isinstance(r, LeaseState))
