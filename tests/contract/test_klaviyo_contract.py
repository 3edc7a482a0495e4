"""Contract tests: the Klaviyo adapter and its stand-in, both checked against Klaviyo's spec.

Every request the adapter sends through a full sync (probe, upsert with import errors, a
cancelled job, a 429 storm, remove, unsubscribe, suppression reads across pages, erase) and
every response the stand-in returns are validated against the vendored OpenAPI file
``klaviyo_2026-07-15.audience_sync.json``. Operations the adapter does not call (subscribe,
suppress, list reads) are exercised with hand-built requests so the stand-in is held to the
spec there too.

Known defects of the vendor file, handled explicitly (each has a test below):

* ``revision`` is ``required`` with a ``default``, so openapi-core alone accepts a request
  without it; the checker asserts the header is really sent.
* No 429 response and no rate-limit headers are declared: a 429 is checked against the
  ``4XX`` catch-all, and ``Retry-After`` / ``RateLimit-*`` are asserted here.
* The import job's ``status`` enum has no ``failed``; the stand-in can be told to answer one
  (to test the adapter's handling of an unknown final state) and that answer is, correctly,
  a contract violation.
* The subscribe, unsubscribe and deletion jobs answer 202 with no body and no job id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest

from infra.sandbox.klaviyo import KlaviyoStandIn, RecordedExchange
from tasks.connectors.destinations.protocol import Member
from tests.connectors.klaviyo_support import (
    KEY,
    LIST,
    OTHER_LIST,
    RecordingSleep,
    fast_policy,
    member,
    open_adapter,
)
from tests.contract.openapi_check import (
    CHECK_HOST,
    ContractChecker,
    HttpExchange,
    load_spec,
)

SPEC = "klaviyo_2026-07-15.audience_sync.json"
JSONAPI = "application/vnd.api+json"
HEADERS = {
    "Authorization": f"Klaviyo-API-Key {KEY}",
    "revision": "2026-07-15",
    "Accept": JSONAPI,
}
ADAPTER_OPERATIONS = {
    ("GET", "/api/lists"),
    ("POST", "/api/profile-bulk-import-jobs"),
    ("GET", "/api/profile-bulk-import-jobs/{job_id}"),
    ("GET", "/api/profile-bulk-import-jobs/{id}/import-errors"),
    ("GET", "/api/profiles"),
    ("DELETE", "/api/lists/{id}/relationships/profiles"),
    ("POST", "/api/profile-subscription-bulk-delete-jobs"),
    ("POST", "/api/data-privacy-deletion-jobs"),
}


def as_exchange(recorded: RecordedExchange) -> HttpExchange:
    request, response = recorded.request, recorded.response
    return HttpExchange(
        method=request.method,
        path=request.path,
        query=request.query,
        request_headers=request.headers,
        request_body=request.body,
        request_content_type=request.header("content-type"),
        status=response.status,
        response_headers=response.headers,
        response_body=response.body,
        response_content_type=response.content_type,
    )


@pytest.fixture(scope="module")
def checker() -> ContractChecker:
    return ContractChecker(load_spec(SPEC))


@pytest.fixture(scope="module")
def adapter_traffic() -> Iterator[list[RecordedExchange]]:
    """Everything a full adapter sync said to the stand-in, and what it answered."""
    monkeypatch = pytest.MonkeyPatch()
    with KlaviyoStandIn(api_key=KEY, lists=[LIST, OTHER_LIST]) as server:
        # The stand-in's real burst limits apply: wait out its Retry-After for real.
        adapter = open_adapter(server, monkeypatch, policy=fast_policy(RecordingSleep(cap=1.2)))
        try:
            _full_sync(server, adapter)
        finally:
            adapter.close()
            monkeypatch.undo()
        yield list(server.exchanges)


def _full_sync(server: KlaviyoStandIn, adapter: Any) -> None:
    adapter.probe([LIST, OTHER_LIST])
    server.reject_on_import("person3@example.com", "Blocked address.")
    people = [member(n, first_name=f"P{n}", ltv=n * 1.5, category="a", score=n) for n in range(110)]
    people.append(Member("tagged", "tagged@example.com", tags=("vip",)))
    assert sum(not r.ok for r in adapter.upsert(LIST, people)) == 1
    server.fail_next_import_job("cancelled")
    assert not any(r.ok for r in adapter.upsert(LIST, people[:2]))
    server.fail_next(3, status=429, retry_after=2)
    assert all(r.ok for r in adapter.upsert(LIST, [member(0, ltv=9.0)]))
    assert all(r.ok for r in adapter.remove(LIST, people[:5]))
    assert all(r.ok for r in adapter.unsubscribe(LIST, people[5:8]))
    for n in range(10, 108):
        server.person_unsubscribes(f"person{n}@example.com")
    server.person_leaves_list("person108@example.com", LIST)
    page = adapter.suppressions_since(LIST, None)
    assert len(page.suppressions) == 102
    adapter.suppressions_since(LIST, page.cursor)
    assert all(r.ok for r in adapter.erase(["person9@example.com"]))


def test_the_adapter_uses_every_operation_it_needs(
    checker: ContractChecker, adapter_traffic: list[RecordedExchange]
) -> None:
    used = {
        (e.request.method, checker.operation(e.request.method, e.request.path)[0])
        for e in adapter_traffic
    }
    assert used == ADAPTER_OPERATIONS
    assert any("page[cursor]" in e.request.query for e in adapter_traffic)
    assert any(e.response.status == 429 for e in adapter_traffic)


def test_every_adapter_request_keeps_the_contract(
    checker: ContractChecker, adapter_traffic: list[RecordedExchange]
) -> None:
    problems = [
        f"{ex.label}: {p}"
        for ex in map(as_exchange, adapter_traffic)
        for p in checker.request_problems(ex)
    ]
    assert problems == []
    assert len(adapter_traffic) > 20


def test_every_stand_in_response_keeps_the_contract(
    checker: ContractChecker, adapter_traffic: list[RecordedExchange]
) -> None:
    problems = [
        f"{ex.label}: {p}"
        for ex in map(as_exchange, adapter_traffic)
        for p in checker.response_problems(ex)
    ]
    assert problems == []


# -- operations the adapter does not call, and error answers --------------------------------------
@pytest.fixture
def raw() -> Iterator[tuple[KlaviyoStandIn, httpx.Client]]:
    with (
        KlaviyoStandIn(api_key=KEY, lists=[LIST]) as server,
        httpx.Client(base_url=server.url, headers=HEADERS, timeout=5) as client,
    ):
        yield server, client


def _post(client: httpx.Client, path: str, body: Any) -> httpx.Response:
    return client.post(path, content=json.dumps(body), headers={"Content-Type": JSONAPI})


def _profiles(*emails: str, consent: str, **marketing: Any) -> dict[str, Any]:
    return {
        "data": [
            {
                "type": "profile",
                "attributes": {
                    "email": e,
                    "subscriptions": {"email": {"marketing": {"consent": consent, **marketing}}},
                },
            }
            for e in emails
        ]
    }


def test_the_other_operations_keep_the_contract_both_ways(
    checker: ContractChecker, raw: tuple[KlaviyoStandIn, httpx.Client]
) -> None:
    server, client = raw
    earlier = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    subscribe = {
        "data": {
            "type": "profile-subscription-bulk-create-job",
            "attributes": {
                "custom_source": "contract test",
                "historical_import": True,
                "profiles": _profiles("a@example.com", consent="SUBSCRIBED", consented_at=earlier),
            },
            "relationships": {"list": {"data": {"type": "list", "id": LIST}}},
        }
    }
    assert _post(client, "/api/profile-subscription-bulk-create-jobs", subscribe).status_code == 202
    suppress = {
        "data": {
            "type": "profile-suppression-bulk-create-job",
            "attributes": {
                "profiles": {
                    "data": [{"type": "profile", "attributes": {"email": "b@example.com"}}]
                }
            },
        }
    }
    assert _post(client, "/api/profile-suppression-bulk-create-jobs", suppress).status_code == 202
    members = client.get(f"/api/lists/{LIST}/relationships/profiles", params={"page[size]": "1"})
    assert members.json()["data"][0]["type"] == "profile"
    ids = [{"type": "profile", "id": members.json()["data"][0]["id"]}]
    assert (
        _post(client, f"/api/lists/{LIST}/relationships/profiles", {"data": ids}).status_code == 204
    )
    job = {
        "data": {
            "type": "profile-bulk-import-job",
            "attributes": {
                "profiles": {"data": [{"type": "profile", "attributes": {"email": "x"}}]}
            },
            "relationships": {"lists": {"data": [{"type": "list", "id": LIST}]}},
        }
    }
    job_id = _post(client, "/api/profile-bulk-import-jobs", job).json()["data"]["id"]
    for _ in range(2):
        client.get(f"/api/profile-bulk-import-jobs/{job_id}", params={"include": "lists"})
    errors = client.get(f"/api/profile-bulk-import-jobs/{job_id}/import-errors").json()["data"]
    assert errors[0]["attributes"]["source"]["pointer"].endswith("/data/0/attributes/email")
    subscribed = client.get(
        "/api/profiles",
        params={
            "filter": 'equals(email,"a@example.com")',
            "additional-fields[profile]": "subscriptions",
        },
    ).json()["data"][0]["attributes"]
    assert subscribed["subscriptions"]["email"]["marketing"]["consent"] == "SUBSCRIBED"
    plain = client.get("/api/profiles").json()["data"][0]["attributes"]
    assert "subscriptions" not in plain  # only with additional-fields[profile]=subscriptions

    problems = [
        f"{ex.label}: {p}"
        for ex in map(as_exchange, server.exchanges)
        for p in checker.problems(ex)
    ]
    assert problems == []


@pytest.mark.parametrize(
    ("method", "path", "params", "headers", "status", "code"),
    [
        ("GET", "/api/profiles", {"filter": "contains(email,'x')"}, {}, 400, "invalid"),
        ("GET", "/api/profiles", {"page[size]": "500"}, {}, 400, "invalid"),
        ("GET", "/api/profiles", {"bogus": "1"}, {}, 400, "invalid"),
        ("GET", "/api/lists", {}, {"revision": "1999-01-01"}, 400, "invalid"),
        ("GET", "/api/lists", {}, {"Authorization": "Klaviyo-API-Key nope"}, 401, None),
        ("GET", "/api/profile-bulk-import-jobs/nope", {}, {}, 404, "not_found"),
    ],
)
def test_error_answers_have_klaviyos_shape(
    checker: ContractChecker,
    raw: tuple[KlaviyoStandIn, httpx.Client],
    method: str,
    path: str,
    params: dict[str, str],
    headers: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    server, client = raw
    response = client.request(method, path, params=params, headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"] == JSONAPI
    if code is not None:
        assert response.json()["errors"][0]["code"] == code
    checker.check_response(as_exchange(server.exchanges[-1]))


# -- the known defects, one by one ---------------------------------------------------------------
def test_defect_revision_default_hides_a_missing_header(checker: ContractChecker) -> None:
    spec = load_spec(SPEC)
    spec["servers"] = [{"url": CHECK_HOST}]
    bare = MockRequest(
        CHECK_HOST,
        "get",
        "/api/lists",
        headers={"Authorization": f"Klaviyo-API-Key {KEY}"},
    )
    OpenAPI.from_dict(spec).validate_request(bare)  # openapi-core alone: "valid"
    exchange = HttpExchange("GET", "/api/lists", request_headers={"Authorization": "x"})
    assert any("'revision' was not sent" in p for p in checker.request_problems(exchange))


def test_defect_429_is_undeclared_so_its_headers_are_checked_here(
    checker: ContractChecker, adapter_traffic: list[RecordedExchange]
) -> None:
    throttled = [e for e in adapter_traffic if e.response.status == 429]
    assert throttled
    for recorded in throttled:
        assert recorded.response.headers["Retry-After"].isdigit()
        assert not any(h.startswith("RateLimit-") for h in recorded.response.headers)
        checker.check_response(as_exchange(recorded))  # against the 4XX catch-all
    served = [e for e in adapter_traffic if e.response.status < 300]
    assert all("RateLimit-Reset" in e.response.headers for e in served)


def test_defect_a_failed_job_state_is_outside_the_spec(checker: ContractChecker) -> None:
    with (
        KlaviyoStandIn(api_key=KEY, lists=[LIST], polls_to_finish=1) as server,
        httpx.Client(base_url=server.url, headers=HEADERS, timeout=5) as client,
    ):
        server.fail_next_import_job("failed")
        job = {
            "data": {
                "type": "profile-bulk-import-job",
                "attributes": {
                    "profiles": {
                        "data": [{"type": "profile", "attributes": {"email": "a@example.com"}}]
                    }
                },
            }
        }
        job_id = _post(client, "/api/profile-bulk-import-jobs", job).json()["data"]["id"]
        assert (
            client.get(f"/api/profile-bulk-import-jobs/{job_id}").json()["data"]["attributes"][
                "status"
            ]
            == "failed"
        )
        problems = checker.response_problems(as_exchange(server.exchanges[-1]))
    assert any("'failed' is not one of" in p for p in problems)


def test_defect_consent_and_deletion_jobs_answer_202_without_a_body(
    adapter_traffic: list[RecordedExchange],
) -> None:
    bodiless = {"/api/profile-subscription-bulk-delete-jobs", "/api/data-privacy-deletion-jobs"}
    answers = [e.response for e in adapter_traffic if e.request.path in bodiless]
    assert answers and all(r.status == 202 and r.body == b"" for r in answers)
