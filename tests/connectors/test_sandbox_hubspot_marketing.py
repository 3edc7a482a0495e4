"""The HubSpot destination stand-in is as strict as the vendor: raw HTTP against it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from infra.sandbox.hubspot_marketing import HubSpotMarketingStandIn

TOKEN = "pat-na1-sandbox-0123456789"
LIST = "7"
UPSERT = "/crm/v3/objects/contacts/batch/upsert"
STATUS_READ = "/communication-preferences/v4/statuses/batch/read"


@pytest.fixture
def hubspot() -> Iterator[HubSpotMarketingStandIn]:
    with HubSpotMarketingStandIn(token=TOKEN, lists=[LIST]) as server:
        yield server


@pytest.fixture
def client(hubspot: HubSpotMarketingStandIn) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=hubspot.url, headers=headers, timeout=5) as c:
        yield c


def upsert_input(email: str, trace: str | None = "0", **properties: str) -> dict[str, Any]:
    item: dict[str, Any] = {"idProperty": "email", "id": email, "properties": properties}
    if trace is not None:
        item["objectWriteTraceId"] = trace
    return item


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) >= {"status", "message", "correlationId", "category"}, body
    return str(body["message"])


def test_all_good_is_200_and_a_new_contact_says_so(client: httpx.Client) -> None:
    first = client.post(UPSERT, json={"inputs": [upsert_input("a@example.com", firstname="A")]})
    again = client.post(UPSERT, json={"inputs": [upsert_input("A@example.com", firstname="B")]})

    assert first.status_code == again.status_code == 200
    assert first.json()["results"][0]["new"] is True
    assert again.json()["results"][0]["new"] is False
    assert again.json()["results"][0]["properties"]["firstname"] == "B"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"inputs": [{**upsert_input("a@example.com"), "extra": 1}]}, 'Unrecognized field "extra"'),
        ({"inputs": [upsert_input("a@example.com", firstname=3)]}, "expected string"),  # type: ignore[arg-type]
        ({"inputs": [{"id": "a@example.com", "idProperty": "email"}]}, "'properties'"),
        (
            {"inputs": [upsert_input(f"p{n}@example.com", str(n)) for n in range(101)]},
            "the maximum is 100",
        ),
        (
            {"inputs": [upsert_input("a@example.com", "0"), upsert_input("A@example.com", "1")]},
            "Duplicate IDs",
        ),
    ],
)
def test_malformed_batches_fail_whole(client: httpx.Client, body: Any, needle: str) -> None:
    response = client.post(UPSERT, json=body)
    assert response.status_code == 400
    assert needle in error_of(response)


def test_a_bad_input_fails_the_batch_unless_every_input_is_traced(client: httpx.Client) -> None:
    untraced = [upsert_input("ok@example.com", None), upsert_input("bad@", None)]
    traced = [upsert_input("ok@example.com", "0"), upsert_input("bad@", "1")]

    whole = client.post(UPSERT, json={"inputs": untraced})
    partial = client.post(UPSERT, json={"inputs": traced})

    assert whole.status_code == 400 and "bad@" in error_of(whole)
    assert partial.status_code == 207
    body = partial.json()
    assert body["numErrors"] == 1
    assert body["errors"][0]["context"] == {"id": ["bad@"], "objectWriteTraceId": ["1"]}
    assert [r["objectWriteTraceId"] for r in body["results"]] == ["0"]


def test_property_values_are_checked_against_the_property_type(
    hubspot: HubSpotMarketingStandIn, client: httpx.Client
) -> None:
    hubspot.add_property("ltv", "number", "number")
    hubspot.add_property("renewal", "date", "date")
    cases = {
        "0": {"ltv": "12.5", "renewal": "2026-12-01"},
        "1": {"ltv": "lots"},
        "2": {"renewal": "1764547200000"},  # 2025-12-01T00:00:00Z: midnight, accepted
        "3": {"renewal": "1764547200001"},  # one millisecond past midnight
        "4": {"renewal": "2026-02-30"},
        "5": {"hs_object_id": "9"},
        "6": {"ltv": ""},  # clears
    }
    inputs = [upsert_input(f"p{t}@example.com", t, **props) for t, props in cases.items()]

    body = client.post(UPSERT, json={"inputs": inputs}).json()

    failed = {e["context"]["objectWriteTraceId"][0]: e["errors"][0]["code"] for e in body["errors"]}
    assert failed == {
        "1": "INVALID_NUMBER",
        "3": "INVALID_DATE",
        "4": "INVALID_DATE",
        "5": "READ_ONLY_VALUE",
    }


def test_results_come_back_in_another_order(client: httpx.Client) -> None:
    inputs = [upsert_input(f"p{n}@example.com", str(n)) for n in range(10)]
    body = client.post(UPSERT, json={"inputs": inputs}).json()
    order = [r["objectWriteTraceId"] for r in body["results"]]
    assert sorted(order, key=int) == [str(n) for n in range(10)]
    assert order != sorted(order, key=int)


def test_unknown_query_parameters_and_missing_channel_are_refused(client: httpx.Client) -> None:
    unknown = client.get("/crm/v3/properties/contacts", params={"hapikey": "x"})
    no_channel = client.post(STATUS_READ, json={"inputs": ["a@example.com"]})
    wrong_channel = client.post(STATUS_READ, params={"channel": "SMS"}, json={"inputs": []})

    assert unknown.status_code == no_channel.status_code == wrong_channel.status_code == 400
    assert "hapikey" in error_of(unknown)
    assert "channel" in error_of(no_channel)


def test_memberships_work_on_manual_lists_and_report_missing_records(
    hubspot: HubSpotMarketingStandIn, client: httpx.Client
) -> None:
    client.post(UPSERT, json={"inputs": [upsert_input("a@example.com")]})
    record_id = client.post(
        "/crm/v3/objects/contacts/batch/read",
        json={
            "idProperty": "email",
            "inputs": [{"id": "a@example.com"}],
            "properties": [],
            "propertiesWithHistory": [],
        },
    ).json()["results"][0]["id"]

    added = client.put(f"/crm/v3/lists/{LIST}/memberships/add", json=[record_id, "424242"])
    again = client.put(f"/crm/v3/lists/{LIST}/memberships/add", json=[record_id])
    too_many = client.get(f"/crm/v3/lists/{LIST}/memberships", params={"limit": 251})
    dynamic = client.post(
        "/crm/v3/lists", json={"name": "d", "objectTypeId": "0-1", "processingType": "DYNAMIC"}
    )

    assert added.json() == {
        "recordsIdsAdded": [record_id],
        "recordIdsRemoved": [],
        "recordIdsMissing": ["424242"],
    }
    assert again.json()["recordsIdsAdded"] == []
    assert too_many.status_code == 400
    assert dynamic.status_code == 400 and "MANUAL" in error_of(dynamic)
    assert client.put("/crm/v3/lists/99/memberships/add", json=[]).status_code == 404


def test_opting_out_of_all_unsubscribes_every_subscription_type(
    hubspot: HubSpotMarketingStandIn, client: httpx.Client
) -> None:
    hubspot.person_unsubscribes("a@example.com")

    statuses = client.post(
        STATUS_READ, params={"channel": "EMAIL"}, json={"inputs": ["a@example.com"]}
    )
    wide = client.post(
        f"{STATUS_READ.removesuffix('/read')}/unsubscribe-all/read",
        params={"channel": "EMAIL"},
        json={"inputs": ["A@example.com"]},
    )

    assert [s["status"] for s in statuses.json()["results"][0]["statuses"]] == ["UNSUBSCRIBED"]
    assert wide.json()["results"][0]["wideStatuses"][0]["status"] == "UNSUBSCRIBED"
    assert hubspot.subscription_status("a@example.com", 1001) == "UNSUBSCRIBED"


def test_gdpr_delete_blocklists_even_unknown_addresses(
    hubspot: HubSpotMarketingStandIn, client: httpx.Client
) -> None:
    erased = client.post(
        "/crm/v3/objects/contacts/gdpr-delete",
        json={"objectId": "gone@example.com", "idProperty": "email"},
    )
    later = client.post(UPSERT, json={"inputs": [upsert_input("gone@example.com")]})

    assert erased.status_code == 204 and erased.content == b""
    assert later.status_code == 207
    assert later.json()["errors"][0]["errors"][0]["code"] == "BLOCKLISTED_EMAIL"


def test_tokens_are_checked(hubspot: HubSpotMarketingStandIn) -> None:
    with httpx.Client(base_url=hubspot.url, timeout=5) as anonymous:
        missing = anonymous.get("/crm/v3/properties/contacts")
        wrong = anonymous.get(
            "/crm/v3/properties/contacts", headers={"Authorization": "Bearer nope-000000"}
        )
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["category"] == "INVALID_AUTHENTICATION"


def test_the_burst_window_answers_429_with_the_documented_headers_and_body() -> None:
    with (
        HubSpotMarketingStandIn(token=TOKEN, burst=2, window_seconds=0.3) as server,
        httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
        ) as client,
    ):
        answers = [client.get("/crm/v3/properties/contacts") for _ in range(3)]
        time.sleep(0.35)
        after_window = client.get("/crm/v3/properties/contacts")

    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0].headers["X-HubSpot-RateLimit-Remaining"] == "1"
    limited = answers[2]
    assert limited.headers["X-HubSpot-RateLimit-Max"] == "2"
    assert limited.headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert limited.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "300"
    assert "Retry-After" not in limited.headers
    assert limited.json()["errorType"] == "RATE_LIMIT"
    assert limited.json()["policyName"] == "TEN_SECONDLY_ROLLING"
    assert after_window.status_code == 200  # a 429 did not use up the window


def test_the_daily_quota_runs_out() -> None:
    with (
        HubSpotMarketingStandIn(token=TOKEN, daily_limit=1) as server,
        httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
        ) as client,
    ):
        first = client.get("/crm/v3/properties/contacts")
        second = client.get("/crm/v3/properties/contacts")
    assert first.headers["X-HubSpot-RateLimit-Daily-Remaining"] == "0"
    assert second.status_code == 429 and second.json()["policyName"] == "DAILY"
