"""The Salesforce, Shopify and Stripe presets against their loopback stand-ins: documented
pages, incremental filters, errors, rate limits, OAuth expiry mid-run and token rotation."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from infra.sandbox.salesforce import SalesforceStandIn, sf_datetime
from infra.sandbox.shopify import ShopifyStandIn, shopify_time
from infra.sandbox.stripe import StripeStandIn
from tasks.connectors.auth import MemoryTokenStore
from tasks.connectors.http import RetryPolicy
from tasks.connectors.lake import Lake
from tasks.connectors.sources.rest import RestReader
from tasks.core.config import parse_pipeline
from tasks.core.config_rest import RestSource
from tasks.errors import ConfigError, SourceError
from tasks.ingest import committed_watermark

START = datetime(2026, 1, 1, tzinfo=UTC)


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def load(yaml_body: str) -> RestSource:
    text = f"sources:\n  src:\n    kind: rest\n    role: contacts\n{yaml_body}"
    source = parse_pipeline(text, env={}).sources["src"]
    assert isinstance(source, RestSource)
    return source


def reader(config: RestSource, sleeps: Sleeps | None = None, **policy: Any) -> RestReader:
    retry = RetryPolicy(sleep=sleeps or Sleeps(), rng=random.Random(0), **policy)
    return RestReader(config, source_name="src", policy=retry)


def read(r: RestReader, since: str | None = None) -> pl.DataFrame:
    try:
        frames = [b.frame for b in r.batches(since=since, is_committed=lambda _b: False)]
    finally:
        r.close()
    return pl.concat(frames, how="diagonal")


@pytest.fixture(autouse=True)
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "SF_SECRET": "sf-secret",
        "SF_REFRESH": "sf-rt-initial",
        "SHOP_TOKEN": "shpat_static",
        "SHOP_SECRET": "shop-secret",
        "SHOP_REFRESH": "shprt_initial",
        "STRIPE_KEY": "sk_test_sandbox",
    }.items():
        monkeypatch.setenv(f"AUDIENCE_LAKE_SECRET_{name}", value)


# --- Salesforce -----------------------------------------------------------------------------


def sf_records(count: int) -> list[dict[str, Any]]:
    return [
        {
            "Id": f"003SB{n:010d}",
            "Email": f"person{n}@example.com",
            "FirstName": f"First{n}",
            "LastName": None if n % 7 == 0 else f"Last{n}",
            "SystemModstamp": sf_datetime(START + timedelta(seconds=n)),
        }
        for n in range(count)
    ]


@pytest.fixture
def salesforce() -> Iterator[SalesforceStandIn]:
    with SalesforceStandIn(
        sf_records(450), refresh_tokens=("sf-rt-initial",), rotate_refresh_tokens=True
    ) as server:
        yield server


SF_CLIENT_CREDENTIALS = """\
    auth: {type: oauth2_client_credentials, token_url: /services/oauth2/token,
           client_id: sf-client, client_secret: {secret: sf_secret}}
"""


def sf_config(url: str, auth: str = SF_CLIENT_CREDENTIALS, extra: str = "") -> RestSource:
    return load(
        f"""\
    preset: salesforce_soql
    base_url: {url}
{auth}    options: {{fields: [Email, FirstName, LastName], batch_size: 200}}
    budget: {{requests_per_second: null}}
{extra}"""
    )


def test_salesforce_follows_next_records_url_until_done(salesforce: SalesforceStandIn) -> None:
    r = reader(sf_config(salesforce.url))
    df = read(r)
    assert df.height == 450 and df["Id"].n_unique() == 450
    assert df.columns == ["Id", "Email", "FirstName", "LastName", "SystemModstamp"]
    assert r.stats.pages == 3  # 200 + 200 + 50
    paths = [p for _m, p in salesforce.requests if p.startswith("/services/data")]
    assert paths[0] == "/services/data/v66.0/query"
    assert all(p.startswith("/services/data/v66.0/query/01gSANDBOX") for p in paths[1:])


def test_salesforce_incremental_on_system_modstamp(salesforce: SalesforceStandIn) -> None:
    watermark = sf_datetime(START + timedelta(seconds=400))
    df = read(reader(sf_config(salesforce.url)), since=watermark)
    # overlap 60 s: SystemModstamp > 00:05:40 -> records 341..449
    assert sorted(df["Id"])[0] == "003SB0000000341"
    assert df.height == 109


def test_salesforce_session_expiry_mid_run_re_runs_the_grant(
    salesforce: SalesforceStandIn,
) -> None:
    r = reader(sf_config(salesforce.url, extra="    rows_per_batch: 200\n"))
    batches = r.batches(since=None, is_committed=lambda _b: False)
    first = next(batches)
    salesforce.expire_tokens()  # the next call gets 401 INVALID_SESSION_ID
    rest = list(batches)
    r.close()
    assert first.frame.height + sum(b.frame.height for b in rest) == 450
    assert salesforce.token_requests == 2


def test_salesforce_token_endpoint_outage_is_retried(salesforce: SalesforceStandIn) -> None:
    salesforce.fail_token_next(2, status=503)
    assert read(reader(sf_config(salesforce.url))).height == 450
    assert salesforce.token_requests == 3
    salesforce.fail_token_next(10, status=503)
    with pytest.raises(SourceError, match=r"token endpoint .* answered 503"):
        read(reader(sf_config(salesforce.url), max_attempts=3))


def test_salesforce_uses_the_instance_url_from_the_token_reply(
    salesforce: SalesforceStandIn,
) -> None:
    # base_url points nowhere useful; only the token URL is real. Every API call must go to
    # the instance_url the token endpoint returned, or it would fail to connect.
    auth = f"""\
    auth: {{type: oauth2_client_credentials, token_url: {salesforce.url}/services/oauth2/token,
           client_id: sf-client, client_secret: {{secret: sf_secret}}}}
"""
    config = sf_config("http://127.0.0.1:9", auth=auth)
    assert config.auth is not None and config.auth.instance_url_field == "instance_url"
    assert read(reader(config, max_attempts=1)).height == 450


def test_salesforce_refresh_token_rotation_is_persisted(salesforce: SalesforceStandIn) -> None:
    variable = f"AUDIENCE_LAKE_TEST_SF_RT_{uuid.uuid4().hex[:8].upper()}"
    auth = f"""\
    auth: {{type: oauth2_refresh_token, token_url: /services/oauth2/token, client_id: sf-client,
           client_secret: {{secret: sf_secret}}, refresh_token: {{secret: sf_refresh}},
           token_store: {{kind: env, name: {variable}, process_only: true}}}}
"""
    try:
        r = reader(sf_config(salesforce.url, auth=auth, extra="    rows_per_batch: 200\n"))
        batches = r.batches(since=None, is_committed=lambda _b: False)
        next(batches)
        salesforce.expire_tokens()
        list(batches)
        r.close()
        assert salesforce.token_requests == 2
        # Each refresh rotated the token; the store holds the one the server accepts now.
        assert salesforce.valid_refresh_tokens == {os.environ[variable]}
        assert "sf-rt-initial" not in salesforce.valid_refresh_tokens
        # A later run starts from the store, not from the (now void) configured token.
        assert read(reader(sf_config(salesforce.url, auth=auth))).height == 450
        assert salesforce.valid_refresh_tokens == {os.environ[variable]}
    finally:
        os.environ.pop(variable, None)


def test_salesforce_daily_limit_is_fatal_and_not_retried() -> None:
    with SalesforceStandIn(sf_records(450), daily_limit=2) as salesforce:
        r = reader(sf_config(salesforce.url))
        with pytest.raises(SourceError, match=r"REQUEST_LIMIT_EXCEEDED.*not retried"):
            read(r)
        assert salesforce.api_usage == 2
        api_calls = [p for _m, p in salesforce.requests if p.startswith("/services/data")]
        assert len(api_calls) == 3  # two pages, then the 403, never resent


def test_salesforce_503_is_retried_and_errors_are_reported(
    salesforce: SalesforceStandIn,
) -> None:
    salesforce.fail_next(2, status=503)
    assert read(reader(sf_config(salesforce.url))).height == 450
    bad = sf_config(salesforce.url).model_copy(
        update={"params": {"q": "SELECT Id FROM Nope WHERE SystemModstamp > {since}"}}
    )
    with pytest.raises(SourceError, match=r"answered 400.*MALFORMED_QUERY"):
        read(reader(bad))


# --- Shopify --------------------------------------------------------------------------------


def shop_customers(count: int) -> list[dict[str, Any]]:
    customers = []
    for n in range(count):
        address = {"city": f"City {n % 4}", "country_code": "DE", "default": True}
        customers.append(
            {
                "id": 7_000_000 + n * 13,
                "email": f"buyer{n}@example.com",
                "first_name": f"Buyer{n}",
                "last_name": "Shop",
                "state": "enabled",
                "verified_email": n % 3 != 0,
                # ids and change times run in different orders, as in a real shop
                "updated_at": shopify_time(START + timedelta(minutes=(n * 37) % count)),
                "created_at": shopify_time(START - timedelta(days=n)),
                "addresses": [address],
                "default_address": address,
            }
        )
    return customers


SHOP_STATIC = """\
    auth: {type: api_key, name: X-Shopify-Access-Token, key: {secret: shop_token}}
"""


def shop_config(
    url: str, auth: str = SHOP_STATIC, extra: str = "", rps: str = "null", page_size: int = 50
) -> RestSource:
    return load(
        f"""\
    preset: shopify_customers
    base_url: {url}
{auth}    options: {{page_size: {page_size}}}
    budget: {{requests_per_second: {rps}}}
{extra}"""
    )


@pytest.fixture
def shopify() -> Iterator[ShopifyStandIn]:
    with ShopifyStandIn(
        shop_customers(120), access_tokens=("shpat_static",), refresh_tokens=("shprt_initial",)
    ) as server:
        yield server


def test_shopify_follows_link_headers_in_update_order(shopify: ShopifyStandIn) -> None:
    r = reader(shop_config(shopify.url))
    df = read(r)
    assert df.height == 120 and df["id"].n_unique() == 120
    assert r.stats.pages == 3
    stamps = [datetime.fromisoformat(t) for t in df["updated_at"]]
    assert stamps == sorted(stamps)  # search.json, order=updated_at asc
    assert df["addresses"][0].startswith('[{"city":')  # nested JSON kept as text
    assert df["verified_email"].unique().sort().to_list() == ["false", "true"]


def test_shopify_incremental_query_on_updated_at(shopify: ShopifyStandIn) -> None:
    watermark = shopify_time(START + timedelta(minutes=100))  # "...-04:00", shop-local
    df = read(reader(shop_config(shopify.url)), since=watermark)
    # overlap 60 s: updated_at >= minute 99
    assert df.height == 21


def test_shopify_429_retry_after_float_is_honoured(shopify: ShopifyStandIn) -> None:
    shopify.fail_next(1, status=429, retry_after="2.0")
    sleeps = Sleeps()
    assert read(reader(shop_config(shopify.url), sleeps)).height == 120
    assert sleeps.waits and sleeps.waits[0] >= 2.0


def test_shopify_budget_stays_under_the_leaky_bucket() -> None:
    with ShopifyStandIn(
        shop_customers(60), access_tokens=("shpat_static",), bucket_size=2, leak_rate=20
    ) as shopify:
        # 12.5 requests/s, evenly spaced (a fractional rate allows no burst): under the leak.
        paced = shop_config(shopify.url, rps="12.5", page_size=5)
        r = reader(paced)
        assert read(r).height == 60
        assert r.stats.pages == 12 and shopify.throttled == 0
        assert r.budget.waited_seconds > 0.3
        # The same burst without a budget overflows the bucket at once.
        burst = shop_config(shopify.url, page_size=5)
        sleeps = Sleeps()
        with pytest.raises(SourceError, match="answered 429"):
            read(reader(burst, sleeps, max_attempts=2))
        assert shopify.throttled >= 1 and sleeps.waits[0] >= 2.0


def test_shopify_rotating_refresh_token_survives_expiry_mid_run(
    shopify: ShopifyStandIn,
) -> None:
    key = f"shop-{uuid.uuid4().hex}"
    auth = f"""\
    auth: {{type: oauth2_refresh_token, token_url: /admin/oauth/access_token,
           client_id: shop-client, client_secret: {{secret: shop_secret}}, client_auth: body,
           refresh_token: {{secret: shop_refresh}}, token_store: {{kind: memory, name: {key},
           process_only: true}}}}
"""
    r = reader(shop_config(shopify.url, auth=auth, extra="    rows_per_batch: 50\n"))
    batches = r.batches(since=None, is_committed=lambda _b: False)
    first = next(batches)
    shopify.expire_tokens()
    rest = list(batches)
    r.close()
    assert first.frame.height + sum(b.frame.height for b in rest) == 120
    assert shopify.token_requests == 2
    store = MemoryTokenStore(key)
    assert shopify.valid_refresh_tokens == {store.load()}


def test_shopify_stand_in_refuses_parameters_the_endpoint_does_not_take(
    shopify: ShopifyStandIn,
) -> None:
    headers = {"X-Shopify-Access-Token": "shpat_static"}
    listing = f"{shopify.url}/admin/api/2024-10/customers.json"
    search = f"{shopify.url}/admin/api/2024-10/customers/search.json"
    with httpx.Client(headers=headers, timeout=10) as http:
        ordered = http.get(listing, params={"order": "updated_at asc"})
        assert ordered.status_code == 400 and "order" in ordered.json()["errors"]
        windowed = http.get(search, params={"updated_at_min": "2026-01-01T00:00:00Z"})
        assert windowed.status_code == 400 and "updated_at_min" in windowed.json()["errors"]
        # customers.json pages in id order whatever the filter: not by change time.
        page = http.get(listing, params={"updated_at_min": "2025-01-01T00:00:00Z"}).json()
        ids = [c["id"] for c in page["customers"]]
        stamps = [datetime.fromisoformat(c["updated_at"]) for c in page["customers"]]
        assert ids == sorted(ids) and stamps != sorted(stamps)


def _land(config: RestSource, lake: Lake, *, stop_after: int | None = None) -> None:
    """One ingest run (from bronze's watermark, batch by batch), optionally stopped."""
    since = committed_watermark(lake, "bronze/src", config.cursor_field)
    for number, batch in enumerate(
        reader(config).batches(since=since, is_committed=lambda _b: False), start=1
    ):
        lake.merge("bronze/src", batch.frame, keys=["id"])
        if number == stop_after:
            return  # the run stops here (a crash, a kill, a timeout)


def _landed(lake: Lake) -> set[str]:
    return set(lake.read("bronze/src")["id"]) if lake.exists("bronze/src") else set()


def test_shopify_run_stopped_after_the_first_batch_loses_nothing(
    shopify: ShopifyStandIn, tmp_path: Path
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    config = shop_config(shopify.url, extra="    rows_per_batch: 50\n")
    _land(config, lake, stop_after=1)
    assert len(_landed(lake)) == 50
    _land(config, lake)  # the rerun, from the committed watermark
    assert _landed(lake) == {str(c["id"]) for c in shop_customers(120)}


UNORDERED = """\
    base_url: {url}
    path: /admin/api/2024-10/customers.json
    params: {{limit: 50}}
    auth: {{type: api_key, name: X-Shopify-Access-Token, key: {{secret: shop_token}}}}
    records_path: customers
    paginator: {{type: link_header}}
    rows_per_batch: 50
    incremental: {{cursor_field: updated_at, param: updated_at_min, overlap_seconds: 60{order}}}
"""


def test_an_unordered_listing_never_lets_a_partial_run_lift_the_watermark(
    shopify: ShopifyStandIn, tmp_path: Path
) -> None:
    everyone = {str(c["id"]) for c in shop_customers(120)}
    unordered = load(UNORDERED.format(url=shopify.url, order=", order: unordered"))

    # Stopped mid-pull (the API fails on page 2): nothing was committed, nothing lifted.
    lake = Lake(str(tmp_path / "mid-pull"))
    shopify_fail_from_page(shopify, 2)
    with pytest.raises(SourceError, match="answered 400"):
        _land(unordered, lake)
    assert _landed(lake) == set()
    _land(unordered, lake)
    assert _landed(lake) == everyone

    # Stopped between two of the final batches: they are written oldest first.
    lake = Lake(str(tmp_path / "between-batches"))
    _land(unordered, lake, stop_after=1)
    first = lake.read("bronze/src")
    assert first.height == 50
    _land(unordered, lake)
    assert _landed(lake) == everyone


def test_the_stand_in_reproduces_the_loss_of_committing_unordered_pages(
    shopify: ShopifyStandIn, tmp_path: Path
) -> None:
    """The same listing declared ascending (what the old preset assumed): a run stopped after
    its first batch commits a watermark above rows it never read, and the rerun skips them."""
    lake = Lake(str(tmp_path / "lake"))
    assumed = load(UNORDERED.format(url=shopify.url, order=""))
    _land(assumed, lake, stop_after=1)
    _land(assumed, lake)
    lost = {str(c["id"]) for c in shop_customers(120)} - _landed(lake)
    assert len(lost) > 0


def shopify_fail_from_page(shopify: ShopifyStandIn, page: int) -> None:
    """Let ``page - 1`` requests through, then answer 400 once (not retried)."""
    original = shopify.handle
    calls = {"n": 0}

    def handle(request: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == page:
            shopify.handle = original  # type: ignore[method-assign]
            shopify.fail_next(1, status=400)
        return original(request)

    shopify.handle = handle  # type: ignore[method-assign]


# --- Stripe ---------------------------------------------------------------------------------


def stripe_customers(count: int) -> list[dict[str, Any]]:
    base = int(START.timestamp())
    return [
        {
            "id": f"cus_{n:06d}",
            "object": "customer",
            "created": base + n * 60,
            "email": f"payer{n}@example.com",
            "name": f"Payer {n}",
            "address": None if n % 2 else {"city": "Berlin", "country": "DE"},
            "metadata": {"crm_id": str(n)},
            "livemode": False,
        }
        for n in range(count)
    ]


def stripe_config(url: str, extra: str = "") -> RestSource:
    return load(
        f"""\
    preset: stripe_customers
    base_url: {url}
    auth: {{type: bearer, token: {{secret: stripe_key}}}}
    budget: {{requests_per_second: null}}
{extra}"""
    )


@pytest.fixture
def stripe() -> Iterator[StripeStandIn]:
    with StripeStandIn(stripe_customers(250)) as server:
        yield server


def test_stripe_pages_with_starting_after_while_has_more(stripe: StripeStandIn) -> None:
    r = reader(stripe_config(stripe.url, extra="    rows_per_batch: 100\n"))
    batches = r.batches(since=None, is_committed=lambda _b: False)
    first = next(batches)
    assert r.stats.pages == 3  # newest first: nothing is handed over before the full pass
    df = pl.concat([first.frame, *(b.frame for b in batches)])
    r.close()
    assert df.height == 250 and df["id"].n_unique() == 250
    assert stripe.versions_seen == {"2024-06-20"}
    assert df.filter(pl.col("id") == "cus_000000")["metadata"][0] == '{"crm_id":"0"}'


def test_stripe_incremental_created_gte(stripe: StripeStandIn) -> None:
    watermark = str(int(START.timestamp()) + 200 * 60)
    df = read(reader(stripe_config(stripe.url)), since=watermark)
    assert sorted(df["id"]) == [f"cus_{n:06d}" for n in range(200, 250)]


def test_stripe_limit_above_100_is_refused(stripe: StripeStandIn) -> None:
    with pytest.raises(ConfigError, match=r"options.page_size: .*100"):
        stripe_config(stripe.url, extra="    options: {page_size: 101}\n")
    forced = stripe_config(stripe.url, extra="    params: {limit: 101}\n")
    with pytest.raises(SourceError, match=r"answered 400.*between 1 and 100"):
        read(reader(forced))


def test_stripe_should_retry_header_overrides_the_status(stripe: StripeStandIn) -> None:
    stripe.fail_next(1, status=409, should_retry=True, code="lock_timeout")
    stripe.fail_next(1, status=429)  # rate limited, no header: the status rule applies
    assert read(reader(stripe_config(stripe.url))).height == 250
    before = len(stripe.requests)
    stripe.fail_next(1, status=500, should_retry=False)
    with pytest.raises(SourceError, match="answered 500"):
        read(reader(stripe_config(stripe.url)))
    assert len(stripe.requests) - before == 1  # the server said a retry cannot help


def test_stripe_bad_key_fails_without_showing_it(
    stripe: StripeStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_STRIPE_KEY", "sk_test_wrong_key_1234")
    with pytest.raises(SourceError, match="answered 401") as failure:
        read(reader(stripe_config(stripe.url)))
    assert "sk_test_wrong_key_1234" not in str(failure.value)


def test_stripe_newest_first_pull_stopped_between_its_batches_loses_nothing(
    stripe: StripeStandIn, tmp_path: Path
) -> None:
    """Stripe lists newest first, so the pull is held to its end; its batches are then
    committed oldest first, and a stop after the first leaves the watermark below the rest."""
    lake = Lake(str(tmp_path / "lake"))
    config = stripe_config(stripe.url, extra="    rows_per_batch: 100\n")
    _land(config, lake, stop_after=1)
    first = lake.read("bronze/src")
    assert first.height == 100
    assert first["created"].cast(pl.Int64).max() == int(START.timestamp()) + 99 * 60
    _land(config, lake)
    assert _landed(lake) == {c["id"] for c in stripe_customers(250)}
