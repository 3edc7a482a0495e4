"""The HubSpot-style CRM stand-in speaks the documented wire format over real loopback HTTP."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random
from typing import Any

import httpx
import pytest

from infra.sandbox._http import StandInError
from infra.sandbox.crm import CrmStandIn
from infra.sandbox.generate import REFERENCE_TIME, build_crm, generate, iso_millis

SEARCH = "/crm/v3/objects/contacts/search"
CONTACTS = "/crm/v3/objects/contacts"
MAX_PAGES = 200


def _epoch_ms(value: str) -> int:
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def _token(client: httpx.Client, **form: str) -> str:
    data = {"grant_type": "client_credentials", "client_id": "demo-client"}
    data["client_secret"] = "demo-secret"
    response = client.post("/oauth/v1/token", data={**data, **form})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


@pytest.fixture(scope="module")
def sample_contacts() -> list[dict[str, Any]]:
    return build_crm(Random(7), 250)[0]


@pytest.fixture
def crm(sample_contacts: list[dict[str, Any]]) -> Iterator[CrmStandIn]:
    with CrmStandIn(sample_contacts) as server:
        yield server


@pytest.fixture
def client(crm: CrmStandIn) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=crm.url, timeout=5) as http:
        http.headers["Authorization"] = f"Bearer {_token(http)}"
        yield http


def _search(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post(SEARCH, json=body)


def _gte(value: int, operator: str = "GTE") -> list[dict[str, Any]]:
    filters = [{"propertyName": "lastmodifieddate", "operator": operator, "value": str(value)}]
    return [{"filters": filters}]


# -- OAuth token endpoint --------------------------------------------------------------------
def test_token_with_body_credentials(crm: CrmStandIn) -> None:
    form = {"grant_type": "client_credentials", "client_id": "demo-client"}
    form["client_secret"] = "demo-secret"
    response = httpx.post(f"{crm.url}/oauth/v1/token", data=form, timeout=5)

    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 1800
    assert body["access_token"]
    assert crm.token_requests == 1


def test_token_with_http_basic(crm: CrmStandIn) -> None:
    response = httpx.post(
        f"{crm.url}/oauth/v1/token",
        data={"grant_type": "client_credentials"},
        auth=("demo-client", "demo-secret"),
        timeout=5,
    )

    assert response.status_code == 200
    assert response.json()["access_token"]


def test_token_rejects_bad_credentials_and_grants(crm: CrmStandIn) -> None:
    url = f"{crm.url}/oauth/v1/token"
    bad = httpx.post(url, data={"grant_type": "client_credentials"}, auth=("demo-client", "no"))
    grant = httpx.post(url, data={"grant_type": "password"}, auth=("demo-client", "demo-secret"))
    missing = httpx.post(url, data={}, auth=("demo-client", "demo-secret"))

    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    assert "demo-client" in bad.json()["error_description"]
    assert grant.status_code == 400 and grant.json()["error"] == "unsupported_grant_type"
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
    assert crm.token_requests == 3


def test_api_requires_bearer_token(crm: CrmStandIn) -> None:
    response = httpx.get(f"{crm.url}{CONTACTS}", timeout=5)
    wrong = httpx.get(f"{crm.url}{CONTACTS}", headers={"Authorization": "Bearer nope"})

    for rejected in (response, wrong):
        assert rejected.status_code == 401
        body = rejected.json()
        assert body["status"] == "error" and body["category"] == "INVALID_AUTHENTICATION"
        assert body["correlationId"] and body["message"]


def test_expire_tokens_forces_a_new_token(crm: CrmStandIn, client: httpx.Client) -> None:
    assert client.get(CONTACTS).status_code == 200

    crm.expire_tokens()
    expired = client.get(CONTACTS)
    client.headers["Authorization"] = f"Bearer {_token(client)}"

    assert expired.status_code == 401
    assert "expired" in expired.json()["message"]
    assert client.get(CONTACTS).status_code == 200


def test_short_ttl_tokens_expire(sample_contacts: list[dict[str, Any]]) -> None:
    with (
        CrmStandIn(sample_contacts[:3], token_ttl=0.2) as crm,
        httpx.Client(base_url=crm.url, timeout=5) as http,
    ):
        http.headers["Authorization"] = f"Bearer {_token(http)}"
        assert http.get(CONTACTS).status_code == 200
        time.sleep(0.3)
        assert http.get(CONTACTS).status_code == 401


# -- list endpoint -------------------------------------------------------------------------
def test_list_pages_to_completion(
    client: httpx.Client, sample_contacts: list[dict[str, Any]]
) -> None:
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 100, "properties": "email,firstname", "archived": "false"}
    for _ in range(MAX_PAGES):
        response = client.get(CONTACTS, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        seen.extend(result["id"] for result in body["results"])
        if "paging" not in body:
            break
        params["after"] = body["paging"]["next"]["after"]
    else:
        pytest.fail("paging did not finish")

    assert seen == [c["id"] for c in sample_contacts]
    first = body["results"][0]
    assert set(first["properties"]) == {
        "email",
        "firstname",
        "hs_object_id",
        "lastmodifieddate",
        "createdate",
    }
    assert set(first) >= {"id", "properties", "createdAt", "updatedAt", "archived"}


def test_list_cursor_is_opaque_and_link_is_followable(
    client: httpx.Client, sample_contacts: list[dict[str, Any]]
) -> None:
    first = client.get(CONTACTS, params={"limit": 2}).json()
    after = first["paging"]["next"]["after"]
    followed = client.get(first["paging"]["next"]["link"]).json()
    by_cursor = client.get(f"{CONTACTS}?limit=2&after={after}").json()

    assert "%3D" in after  # percent-encoded base64, as HubSpot's docs show
    assert base64.b64decode(after.replace("%3D", "=")).decode().strip() == sample_contacts[2]["id"]
    assert [r["id"] for r in followed["results"]] == [c["id"] for c in sample_contacts[2:4]]
    assert by_cursor["results"] == followed["results"]


def test_list_limit_over_100_is_a_validation_error(client: httpx.Client) -> None:
    response = client.get(CONTACTS, params={"limit": 101})

    assert response.status_code == 400
    assert response.json()["category"] == "VALIDATION_ERROR"
    assert "limit" in response.json()["message"]


# -- search endpoint -----------------------------------------------------------------------
def test_search_gte_ascending_pages_everything_in_order(
    client: httpx.Client, sample_contacts: list[dict[str, Any]]
) -> None:
    stamps = sorted(_epoch_ms(c["properties"]["lastmodifieddate"]) for c in sample_contacts)
    watermark = stamps[len(stamps) // 2]
    expected = [
        c for c in sample_contacts if _epoch_ms(c["properties"]["lastmodifieddate"]) >= watermark
    ]
    body: dict[str, Any] = {
        "filterGroups": _gte(watermark),
        "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
        "properties": ["email", "lastmodifieddate"],
        "limit": 40,
        "after": "0",
    }
    results: list[dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        page = _search(client, **body).json()
        assert page["total"] == len(expected)
        results.extend(page["results"])
        if "paging" not in page:
            break
        body["after"] = page["paging"]["next"]["after"]

    keys = [(_epoch_ms(r["properties"]["lastmodifieddate"]), int(r["id"])) for r in results]
    assert keys == sorted(keys)  # ascending, ties broken by ascending id
    assert {r["id"] for r in results} == {c["id"] for c in expected}
    assert set(results[0]["properties"]) == {
        "email",
        "hs_object_id",
        "lastmodifieddate",
        "createdate",
    }


def test_search_gt_excludes_ties_that_gte_includes(
    client: httpx.Client, sample_contacts: list[dict[str, Any]]
) -> None:
    stamps = [c["properties"]["lastmodifieddate"] for c in sample_contacts]
    tied = next(s for s in stamps if stamps.count(s) > 1)
    newer = sum(1 for s in stamps if _epoch_ms(s) > _epoch_ms(tied))

    gte = _search(client, filterGroups=_gte(_epoch_ms(tied)), limit=1).json()
    gt = _search(client, filterGroups=_gte(_epoch_ms(tied), "GT"), limit=1).json()

    assert gte["total"] == newer + stamps.count(tied)
    assert gt["total"] == newer


def test_search_descending_and_or_groups(
    client: httpx.Client, sample_contacts: list[dict[str, Any]]
) -> None:
    stamps = sorted(_epoch_ms(c["properties"]["lastmodifieddate"]) for c in sample_contacts)
    low, high = stamps[10], stamps[-10]
    groups = [
        {"filters": [{"propertyName": "lastmodifieddate", "operator": "LT", "value": str(low)}]},
        {"filters": [{"propertyName": "lastmodifieddate", "operator": "GTE", "value": str(high)}]},
    ]
    sorts = [{"propertyName": "lastmodifieddate", "direction": "DESCENDING"}]
    page = _search(client, filterGroups=groups, sorts=sorts, limit=100).json()

    values = [_epoch_ms(r["properties"]["lastmodifieddate"]) for r in page["results"]]
    assert values == sorted(values, reverse=True)
    assert page["total"] == sum(1 for s in stamps if s < low or s >= high)
    assert "paging" not in page


def test_search_limit_over_200_is_rejected(client: httpx.Client) -> None:
    response = _search(client, limit=201)

    assert response.status_code == 400
    assert response.json()["category"] == "VALIDATION_ERROR"
    assert "200" in response.json()["message"]


def test_search_rejects_unknown_operator(client: httpx.Client) -> None:
    groups = [{"filters": [{"propertyName": "email", "operator": "LIKE", "value": "x"}]}]
    response = _search(client, filterGroups=groups)

    assert response.status_code == 400
    assert "LIKE" in response.json()["message"]


def test_search_caps_paging_at_10000_results() -> None:
    base = REFERENCE_TIME - timedelta(days=1)
    contacts = [
        {"id": str(i), "properties": {"lastmodifieddate": iso_millis(base + timedelta(seconds=i))}}
        for i in range(1, 10_051)
    ]
    with CrmStandIn(contacts) as crm, httpx.Client(base_url=crm.url, timeout=10) as http:
        http.headers["Authorization"] = f"Bearer {_token(http)}"
        sorts = [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}]
        last_page = _search(http, sorts=sorts, limit=100, after="9900")
        over = _search(http, sorts=sorts, limit=200, after="9900")
        beyond = _search(http, sorts=sorts, limit=1, after="10000")

    assert last_page.status_code == 200
    assert last_page.json()["total"] == 10_050
    assert last_page.json()["paging"]["next"]["after"] == "10000"  # following it fails
    assert last_page.json()["results"][-1]["id"] == "10000"
    for rejected in (over, beyond):
        assert rejected.status_code == 400
        assert rejected.json()["category"] == "VALIDATION_ERROR"
        assert "10000" in rejected.json()["message"]


def test_upsert_contact_is_visible_to_an_incremental_search(
    crm: CrmStandIn, client: httpx.Client, sample_contacts: list[dict[str, Any]]
) -> None:
    newest = max(_epoch_ms(c["properties"]["lastmodifieddate"]) for c in sample_contacts)
    target = sample_contacts[5]["id"]

    updated = crm.upsert_contact({"firstname": "Renamed", "marketing_opt_in": False}, id=target)
    created = crm.upsert_contact({"email": "new.person@example.com"})
    page = _search(client, filterGroups=_gte(newest, "GT"), properties=["firstname"]).json()

    assert _epoch_ms(updated["properties"]["lastmodifieddate"]) > newest
    assert updated["properties"]["marketing_opt_in"] == "false"
    assert int(created["id"]) > max(int(c["id"]) for c in sample_contacts)
    assert [r["id"] for r in page["results"]] == [target, created["id"]]
    assert page["results"][0]["properties"]["firstname"] == "Renamed"


def test_upsert_with_explicit_modified_at(crm: CrmStandIn) -> None:
    moment = datetime(2026, 10, 30, 12, 0, tzinfo=UTC)
    contact = crm.upsert_contact({"email": "x@example.com"}, id="42", modified_at=moment)

    assert contact["id"] == "42"
    assert contact["properties"]["lastmodifieddate"] == "2026-10-30T12:00:00.000Z"


# -- faults and rate limits ----------------------------------------------------------------
def test_fail_next_injects_429_then_recovers(crm: CrmStandIn, client: httpx.Client) -> None:
    crm.fail_next(1, status=429, retry_after="2")

    limited = client.get(CONTACTS)
    recovered = client.get(CONTACTS)

    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"
    assert limited.json()["errorType"] == "RATE_LIMIT"
    assert recovered.status_code == 200


def test_fail_next_injects_500s_but_not_on_token_requests(
    crm: CrmStandIn, client: httpx.Client
) -> None:
    crm.fail_next(2, status=500, body=b"upstream exploded")

    _token(client)  # token endpoint is not affected
    statuses = [client.get(CONTACTS).status_code for _ in range(3)]

    assert statuses == [500, 500, 200]
    assert crm.requests.count(("GET", CONTACTS)) == 3


def test_rate_limit_returns_secondly_429(sample_contacts: list[dict[str, Any]]) -> None:
    with (
        CrmStandIn(sample_contacts[:5], requests_per_second=4) as crm,
        httpx.Client(base_url=crm.url, timeout=5) as http,
    ):
        http.headers["Authorization"] = f"Bearer {_token(http)}"
        responses = [http.get(CONTACTS) for _ in range(6)]
        time.sleep(1.05)
        after_window = http.get(CONTACTS)

    statuses = [r.status_code for r in responses]
    assert statuses[:4] == [200, 200, 200, 200]
    assert 429 in statuses[4:]
    limited = next(r for r in responses if r.status_code == 429)
    assert "Retry-After" not in limited.headers
    assert limited.json()["policyName"] == "SECONDLY"
    assert limited.json()["message"] == "You have reached your secondly limit."
    assert after_window.status_code == 200


# -- lifecycle and loading -----------------------------------------------------------------
def test_from_file_serves_generated_sample(tmp_path: Path) -> None:
    manifest = generate(tmp_path, contacts=30, seed=1)
    with (
        CrmStandIn.from_file(manifest.crm_contacts) as crm,
        httpx.Client(base_url=crm.url, timeout=5) as http,
    ):
        http.headers["Authorization"] = f"Bearer {_token(http)}"
        body = http.get(CONTACTS, params={"limit": 100}).json()

    assert len(body["results"]) == 30


def test_from_file_names_the_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "contacts.json"
    path.write_text('{"not": "a list"}', "utf-8")

    with pytest.raises(ValueError, match=r"contacts\.json"):
        CrmStandIn.from_file(path)


def test_url_before_start_is_an_error() -> None:
    with pytest.raises(StandInError, match="not running"):
        _ = CrmStandIn([]).url


# -- the search request contract (the vendor's schema) and live ordering ---------------------
@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"limit": 10, "offset": 20}, '"offset"'),  # not a search field: HubSpot says 400
        ({"filterGroups": [{"filters": [], "or": []}]}, '"or"'),
        (
            {"filterGroups": [{"filters": [{"propertyName": "x", "operator": "EQ", "v": "1"}]}]},
            '"v"',
        ),
        ({"limit": "10"}, "body.limit: expected integer"),
        ({"after": 100}, "body.after: expected string"),
        ({"sorts": [{"propertyName": "email", "direction": "UP"}]}, "'UP'"),
    ],
)
def test_search_body_is_checked_against_the_vendor_schema(
    client: httpx.Client, body: dict[str, Any], named: str
) -> None:
    response = _search(client, **body)
    assert response.status_code == 400
    assert response.json()["category"] == "VALIDATION_ERROR"
    assert named in response.json()["message"]


def test_search_applies_one_sort_rule_only(client: httpx.Client) -> None:
    two = [
        {"propertyName": "lastmodifieddate", "direction": "ASCENDING"},
        {"propertyName": "hs_object_id", "direction": "ASCENDING"},
    ]
    assert _search(client, sorts=two).status_code == 400
    by_name = _search(client, sorts=["hs_object_id"], limit=5).json()  # the spec's string form
    assert [r["id"] for r in by_name["results"]] == sorted(
        (r["id"] for r in by_name["results"]), key=int
    )


def test_search_offsets_point_into_the_live_order(crm: CrmStandIn, client: httpx.Client) -> None:
    """Modifying a contact between two pages moves it to the end and shifts every later
    offset: the next page starts one contact later than it would have."""
    body: dict[str, Any] = {
        "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
        "limit": 5,
        "after": "0",
    }
    before = [r["id"] for r in _search(client, **{**body, "limit": 11}).json()["results"]]
    first = _search(client, **body).json()
    crm.upsert_contact({"firstname": "moved"}, id=first["results"][0]["id"])
    second = _search(client, **{**body, "after": first["paging"]["next"]["after"]}).json()
    assert [r["id"] for r in second["results"]] == before[6:11]
    assert before[5] not in [r["id"] for r in first["results"] + second["results"]]


def test_on_search_page_runs_between_pages(crm: CrmStandIn, client: httpx.Client) -> None:
    seen: list[tuple[int, Any]] = []
    crm.on_search_page = lambda number, body: seen.append((number, body.get("limit")))
    _search(client, limit=3)
    _search(client, limit=4)
    assert seen == [(1, 3), (2, 4)]
