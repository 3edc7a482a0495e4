"""The Prefect Secret block token store, against the session's real Prefect test server
(started by ``tests/flows/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from infra.sandbox.shopify import ShopifyStandIn
from tasks.connectors.auth import OAuth2RefreshToken, open_token_store
from tasks.connectors.http import build_client
from tasks.core.config_rest_auth import TokenStoreRef
from tasks.token_stores import PrefectSecretTokenStore

pytestmark = pytest.mark.flow


@pytest.fixture
def shopify() -> Iterator[ShopifyStandIn]:
    with ShopifyStandIn([], refresh_tokens=("shprt_initial",)) as server:
        yield server


def refresh_auth(shopify: ShopifyStandIn, store: PrefectSecretTokenStore) -> OAuth2RefreshToken:
    return OAuth2RefreshToken(
        f"{shopify.url}/admin/oauth/access_token",
        "shop-client",
        "shop-secret",
        initial_refresh_token="shprt_initial",
        store=store,
        client_auth="body",
        header="X-Shopify-Access-Token",
        prefix="",
    )


def call(shopify: ShopifyStandIn, auth: httpx.Auth) -> httpx.Response:
    with build_client(shopify.url, auth=auth) as client:
        return client.get("/admin/api/2024-10/customers.json")


def test_prefect_secret_block_store(shopify: ShopifyStandIn) -> None:
    store = open_token_store(TokenStoreRef(kind="prefect_secret", name="shop-rt"), "shop")
    assert isinstance(store, PrefectSecretTokenStore)
    assert store.load() is None
    auth = refresh_auth(shopify, store)
    assert call(shopify, auth).status_code == 200
    assert PrefectSecretTokenStore("shop-rt").load() == auth.refresh_token
    assert shopify.valid_refresh_tokens == {auth.refresh_token}
    # The next run starts from the block, not from the configured (now void) token.
    later = refresh_auth(shopify, PrefectSecretTokenStore("shop-rt"))
    assert later.refresh_token == auth.refresh_token
    assert call(shopify, later).status_code == 200
    assert PrefectSecretTokenStore("shop-rt").load() == later.refresh_token != auth.refresh_token
