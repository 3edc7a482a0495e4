"""Token stores (env, memory, Prefect Secret block), refresh-token rotation failure handling, and
the rate budget's concurrency bound and wait counter."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from infra.sandbox.shopify import ShopifyStandIn
from tasks.connectors.auth import (
    TOKEN_STORES,
    EnvTokenStore,
    MemoryTokenStore,
    OAuth2RefreshToken,
    open_token_store,
)
from tasks.connectors.http import build_client
from tasks.connectors.ratelimit import RateBudget
from tasks.core.config_rest_auth import TokenStoreRef
from tasks.errors import ConfigError, SourceError


@pytest.fixture
def shopify() -> Iterator[ShopifyStandIn]:
    with ShopifyStandIn([], refresh_tokens=("shprt_initial",)) as server:
        yield server


def refresh_auth(shopify: ShopifyStandIn, store: object) -> OAuth2RefreshToken:
    return OAuth2RefreshToken(
        f"{shopify.url}/admin/oauth/access_token",
        "shop-client",
        "shop-secret",
        initial_refresh_token="shprt_initial",
        store=store,  # type: ignore[arg-type]
        client_auth="body",
        header="X-Shopify-Access-Token",
        prefix="",
    )


def call(shopify: ShopifyStandIn, auth: httpx.Auth) -> httpx.Response:
    with build_client(shopify.url, auth=auth) as client:
        return client.get("/admin/api/2024-10/customers.json")


def test_env_store_round_trip_and_rotation(shopify: ShopifyStandIn) -> None:
    variable = f"AUDIENCE_LAKE_TEST_RT_{uuid.uuid4().hex[:8].upper()}"
    store = EnvTokenStore(variable)
    try:
        assert store.load() is None
        auth = refresh_auth(shopify, store)
        assert call(shopify, auth).status_code == 200
        assert auth.rotations == 1 and os.environ[variable] == auth.refresh_token
        assert shopify.valid_refresh_tokens == {os.environ[variable]}
        # A second client (a later run) picks the rotated token up from the store.
        later = refresh_auth(shopify, EnvTokenStore(variable))
        assert later.refresh_token == os.environ[variable]
        assert call(shopify, later).status_code == 200
    finally:
        os.environ.pop(variable, None)


def test_a_rotation_that_cannot_be_saved_stops_the_run(shopify: ShopifyStandIn) -> None:
    class BrokenStore(MemoryTokenStore):
        def save(self, value: str) -> None:
            raise OSError("store is read-only")

    auth = refresh_auth(shopify, BrokenStore(f"broken-{uuid.uuid4().hex}"))
    with pytest.raises(SourceError, match=r"rotated the refresh token but saving it .* failed"):
        call(shopify, auth)


def test_unknown_store_kind_names_the_fix() -> None:
    saved = TOKEN_STORES.pop("prefect_secret", None)
    try:
        with pytest.raises(ConfigError, match=r"source 'shop'.*tasks.token_stores"):
            open_token_store(TokenStoreRef(kind="prefect_secret", name="x"), "shop")
    finally:
        if saved is not None:
            TOKEN_STORES["prefect_secret"] = saved


def test_budget_bounds_concurrency_and_counts_waiting() -> None:
    budget = RateBudget(max_concurrency=2, name="t")
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal in_flight, peak
        with budget.slot():
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            time.sleep(0.05)
            with lock:
                in_flight -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    stats = budget.stats
    budget.close()
    assert peak == 2 and stats.max_in_flight == 2 and stats.requests == 6
    assert stats.waited_seconds >= 0.05 * 2  # four of six had to wait for a slot


def test_budget_rate_spaces_requests() -> None:
    budget = RateBudget(requests_per_second=20, name="r")
    started = time.monotonic()
    stamps = []
    for _ in range(25):
        with budget.slot():
            stamps.append(time.monotonic() - started)
    budget.close()
    # 20 per rolling second: the 21st request waits for the first to leave the window.
    assert stamps[19] < 0.5 <= 1.0 <= stamps[20]
    assert budget.waited_seconds >= 0.9
    with pytest.raises(ValueError, match="positive"):
        RateBudget(requests_per_second=0)
