"""The Klaviyo stand-in is strict where Klaviyo is: checked with raw HTTP, not the adapter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.sandbox.klaviyo import PROFILE_FILTERS, KlaviyoStandIn, parse_filter
from infra.sandbox.serve import _parse_args, build_klaviyo, config_list_ids

KEY = "pk_sandbox_test"
LIST = "Y6nRLr"
JSONAPI = "application/vnd.api+json"
HEADERS = {"Authorization": f"Klaviyo-API-Key {KEY}", "revision": "2026-07-15"}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server() -> Iterator[KlaviyoStandIn]:
    with KlaviyoStandIn(api_key=KEY, lists=[LIST], polls_to_finish=1) as running:
        yield running


@pytest.fixture
def client(server: KlaviyoStandIn) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=5) as opened:
        yield opened


def post(client: httpx.Client, path: str, body: Any, **headers: str) -> httpx.Response:
    return client.post(path, content=json.dumps(body), headers={"Content-Type": JSONAPI, **headers})


def import_job(*emails: str, lists: tuple[str, ...] = (LIST,)) -> dict[str, Any]:
    return {
        "data": {
            "type": "profile-bulk-import-job",
            "attributes": {
                "profiles": {
                    "data": [{"type": "profile", "attributes": {"email": e}} for e in emails]
                }
            },
            "relationships": {"lists": {"data": [{"type": "list", "id": i} for i in lists]}},
        }
    }


def consent_job(kind: str, consent: str, *emails: str, **attributes: Any) -> dict[str, Any]:
    marketing = {"consent": consent, **attributes.pop("marketing", {})}
    profiles = [
        {
            "type": "profile",
            "attributes": {"email": e, "subscriptions": {"email": {"marketing": marketing}}},
        }
        for e in emails
    ]
    return {"data": {"type": kind, "attributes": {"profiles": {"data": profiles}, **attributes}}}


def run_import(client: httpx.Client, *emails: str) -> dict[str, Any]:
    created = post(client, "/api/profile-bulk-import-jobs", import_job(*emails))
    assert created.status_code == 202, created.text
    assert created.json()["data"]["attributes"]["status"] == "queued"
    job = client.get(f"/api/profile-bulk-import-jobs/{created.json()['data']['id']}")
    attributes: dict[str, Any] = job.json()["data"]["attributes"]
    return attributes


def error_code(response: httpx.Response) -> str:
    return str(response.json()["errors"][0]["code"])


# -- headers --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"Authorization": ""}, 401, "not_authenticated"),
        ({"Authorization": f"Bearer {KEY}"}, 401, "not_authenticated"),
        ({"Authorization": "Klaviyo-API-Key wrong"}, 401, "authentication_failed"),
        ({"revision": "2019-01-01"}, 400, "invalid"),
    ],
)
def test_auth_and_revision_are_required(
    client: httpx.Client, headers: dict[str, str], status: int, code: str
) -> None:
    response = client.get("/api/lists", headers=headers)
    assert (response.status_code, error_code(response)) == (status, code)


def test_a_missing_revision_is_a_400_naming_the_header(server: KlaviyoStandIn) -> None:
    bare = httpx.get(f"{server.url}/api/lists", headers={"Authorization": f"Klaviyo-API-Key {KEY}"})
    assert bare.status_code == 400
    assert bare.json()["errors"][0]["source"] == {"parameter": "revision"}


def test_writes_need_the_jsonapi_content_type(client: httpx.Client) -> None:
    response = client.post("/api/profile-bulk-import-jobs", json=import_job("a@example.com"))
    assert response.status_code == 415


# -- import jobs ----------------------------------------------------------------------------------
def test_a_job_moves_through_its_states_and_applies_only_at_the_end(
    client: httpx.Client,
) -> None:
    with KlaviyoStandIn(api_key=KEY, lists=[LIST], polls_to_finish=3) as slow:
        slow_client = httpx.Client(base_url=slow.url, headers=HEADERS, timeout=5)
        with slow_client:
            job = post(slow_client, "/api/profile-bulk-import-jobs", import_job("a@example.com"))
            path = f"/api/profile-bulk-import-jobs/{job.json()['data']['id']}"
            states = [
                slow_client.get(path).json()["data"]["attributes"]["status"] for _ in range(4)
            ]
            assert states == ["processing", "processing", "complete", "complete"]
    assert slow.list_members(LIST) == {"a@example.com"}


def test_import_limits(client: httpx.Client) -> None:
    too_many = post(
        client, "/api/profile-bulk-import-jobs", import_job(*["a@example.com"] * 10_001)
    )
    assert too_many.status_code == 400
    big = import_job("a@example.com")
    big["data"]["attributes"]["profiles"]["data"][0]["attributes"]["properties"] = {
        "blob": "x" * (5 * 1024 * 1024)
    }
    assert post(client, "/api/profile-bulk-import-jobs", big).status_code == 413
    unknown_list = post(
        client, "/api/profile-bulk-import-jobs", import_job("a@b.co", lists=("no",))
    )
    assert unknown_list.status_code == 400


def test_oversized_and_invalid_profiles_are_import_errors(client: httpx.Client) -> None:
    body = import_job("ok@example.com", "not-an-email", "big@example.com")
    body["data"]["attributes"]["profiles"]["data"][2]["attributes"]["properties"] = {
        "blob": "x" * (101 * 1024)
    }
    created = post(client, "/api/profile-bulk-import-jobs", body).json()["data"]["id"]
    job = client.get(f"/api/profile-bulk-import-jobs/{created}").json()["data"]["attributes"]
    assert (job["completed_count"], job["failed_count"]) == (1, 2)
    errors = client.get(
        f"/api/profile-bulk-import-jobs/{created}/import-errors", params={"page[size]": "1"}
    ).json()
    assert errors["data"][0]["attributes"]["source"]["pointer"].startswith(
        "/data/attributes/profiles/data/1"
    )
    assert "next" in errors["links"]


# -- reads, filters, cursors ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        "equals(first_name,'x')",  # not filterable
        "greater-than(email,'x')",  # operator not allowed for email
        "equals(email,x)",  # unquoted string
        "greater-than(updated,yesterday)",  # not a date
        "any(email,'x')",  # any needs a list
        "equals(email,'x'",  # unbalanced
    ],
)
def test_bad_filters_are_400s(client: httpx.Client, bad: str) -> None:
    response = client.get("/api/profiles", params={"filter": bad})
    assert response.status_code == 400
    assert response.json()["errors"][0]["source"] == {"parameter": "filter"}


def test_filters_combine_with_and() -> None:
    conditions = parse_filter(
        'and(equals(email,"a@b.co"),greater-than(updated,2024-01-01T00:00:00Z))', PROFILE_FILTERS
    )
    assert [(c.op, c.name) for c in conditions] == [
        ("equals", "email"),
        ("greater-than", "updated"),
    ]


def test_unknown_and_repeated_query_parameters_are_rejected(client: httpx.Client) -> None:
    assert client.get("/api/profiles", params={"page[number]": "2"}).status_code == 400
    assert client.get("/api/profiles?page[size]=1&page[size]=2").status_code == 400
    assert client.get("/api/lists", params={"page[size]": "11"}).status_code == 400


def test_a_cursor_is_only_valid_for_its_own_query(client: httpx.Client) -> None:
    run_import(client, "a@example.com", "b@example.com", "c@example.com")
    first = client.get("/api/profiles", params={"page[size]": "2"}).json()
    assert len(first["data"]) == 2
    cursor = httpx.URL(first["links"]["next"]).params["page[cursor]"]
    second = client.get("/api/profiles", params={"page[size]": "2", "page[cursor]": cursor})
    assert [p["attributes"]["email"] for p in second.json()["data"]] == ["c@example.com"]
    other = client.get(
        "/api/profiles", params={"page[size]": "2", "page[cursor]": cursor, "sort": "email"}
    )
    assert other.status_code == 400


# -- consent --------------------------------------------------------------------------------------
def _marketing(server: KlaviyoStandIn, email: str) -> dict[str, Any]:
    profile = server.profile(email)
    assert profile is not None
    marketing: dict[str, Any] = profile["attributes"]["subscriptions"]["email"]["marketing"]
    return marketing


def test_subscribing_clears_an_unsubscribe_but_not_a_bounce(
    server: KlaviyoStandIn, client: httpx.Client
) -> None:
    run_import(client, "a@example.com", "b@example.com")
    server.person_unsubscribes("a@example.com")
    server.person_bounces("b@example.com")
    job = consent_job(
        "profile-subscription-bulk-create-job", "SUBSCRIBED", "a@example.com", "b@example.com"
    )
    response = post(client, "/api/profile-subscription-bulk-create-jobs", job)
    assert (response.status_code, response.content) == (202, b"")
    assert _marketing(server, "a@example.com")["suppression"] == []
    assert [s["reason"] for s in _marketing(server, "b@example.com")["suppression"]] == [
        "HARD_BOUNCE"
    ]


def test_historical_import_rules(client: httpx.Client) -> None:
    kind, path = (
        "profile-subscription-bulk-create-job",
        "/api/profile-subscription-bulk-create-jobs",
    )
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    without_flag = consent_job(
        kind, "SUBSCRIBED", "a@example.com", marketing={"consented_at": past}
    )
    assert post(client, path, without_flag).status_code == 400
    without_time = consent_job(kind, "SUBSCRIBED", "a@example.com", historical_import=True)
    assert post(client, path, without_time).status_code == 400
    in_future = consent_job(
        kind,
        "SUBSCRIBED",
        "a@example.com",
        historical_import=True,
        marketing={"consented_at": future},
    )
    assert post(client, path, in_future).status_code == 400
    fine = consent_job(
        kind,
        "SUBSCRIBED",
        "a@example.com",
        historical_import=True,
        marketing={"consented_at": past},
    )
    assert post(client, path, fine).status_code == 202


def test_unsubscribe_with_a_list_leaves_members_in_it_and_others_globally(
    server: KlaviyoStandIn, client: httpx.Client
) -> None:
    run_import(client, "member@example.com")
    job = consent_job(
        "profile-subscription-bulk-delete-job",
        "UNSUBSCRIBED",
        "member@example.com",
        "stranger@example.com",
    )
    job["data"]["relationships"] = {"list": {"data": {"type": "list", "id": LIST}}}
    assert post(client, "/api/profile-subscription-bulk-delete-jobs", job).status_code == 202
    member = _marketing(server, "member@example.com")
    assert member["suppression"] == [] and member["list_suppressions"][0]["list_id"] == LIST
    assert _marketing(server, "stranger@example.com")["consent"] == "UNSUBSCRIBED"
    assert server.list_members(LIST) == set()


def test_consent_job_limits(client: httpx.Client) -> None:
    emails = [f"p{n}@example.com" for n in range(101)]
    job = consent_job("profile-subscription-bulk-delete-job", "UNSUBSCRIBED", *emails)
    assert post(client, "/api/profile-subscription-bulk-delete-jobs", job).status_code == 400
    wrong = consent_job("profile-subscription-bulk-delete-job", "SUBSCRIBED", "a@example.com")
    assert post(client, "/api/profile-subscription-bulk-delete-jobs", wrong).status_code == 400


# -- lists and deletion ---------------------------------------------------------------------------
def test_list_writes_need_known_profiles_and_stay_under_1000(client: httpx.Client) -> None:
    path = f"/api/lists/{LIST}/relationships/profiles"
    unknown = post(client, path, {"data": [{"type": "profile", "id": "01NOPE"}]})
    assert unknown.status_code == 400
    many = {"data": [{"type": "profile", "id": str(n)} for n in range(1001)]}
    assert post(client, path, many).status_code == 400
    assert post(client, "/api/lists/nope/relationships/profiles", many).status_code == 400


def test_deletion_takes_exactly_one_identifier(
    server: KlaviyoStandIn, client: httpx.Client
) -> None:
    run_import(client, "a@example.com")
    both: dict[str, Any] = {
        "data": {
            "type": "data-privacy-deletion-job",
            "attributes": {
                "profile": {
                    "data": {
                        "type": "profile",
                        "attributes": {"email": "a@example.com", "phone_number": "+4915112345678"},
                    }
                }
            },
        }
    }
    assert post(client, "/api/data-privacy-deletion-jobs", both).status_code == 400
    del both["data"]["attributes"]["profile"]["data"]["attributes"]["phone_number"]
    assert post(client, "/api/data-privacy-deletion-jobs", both).status_code == 202
    assert server.profile("a@example.com") is None


# -- rate limits ----------------------------------------------------------------------------------
def test_the_burst_window_answers_429_with_retry_after_only() -> None:
    now = [1000.0]
    with (
        KlaviyoStandIn(api_key=KEY, rate_limits={"deletion": (3, 60)}, clock=lambda: now[0]) as s,
        httpx.Client(base_url=s.url, headers=HEADERS, timeout=5) as c,
    ):
        body = {
            "data": {
                "type": "data-privacy-deletion-job",
                "attributes": {
                    "profile": {"data": {"type": "profile", "attributes": {"email": "x@y.co"}}}
                },
            }
        }
        answers = [post(c, "/api/data-privacy-deletion-jobs", body) for _ in range(4)]
        assert [a.status_code for a in answers] == [202, 202, 202, 429]
        assert answers[2].headers["RateLimit-Remaining"] == "57"
        assert answers[3].headers["Retry-After"] == "1"
        assert "RateLimit-Limit" not in answers[3].headers
        now[0] += 1.0  # next second: the burst window is open again
        assert post(c, "/api/data-privacy-deletion-jobs", body).status_code == 202
        # Reads have their own, larger budget.
        assert c.get("/api/lists").status_code == 200


# -- serve ----------------------------------------------------------------------------------------
def test_serve_starts_klaviyo_with_the_configs_klaviyo_lists(tmp_path: Path) -> None:
    text = (ROOT / "pipeline.yaml").read_text()
    text = text.replace(
        "destinations:\n",
        "destinations:\n"
        "  klaviyo_two:\n"
        "    kind: klaviyo\n"
        "    api_key: {secret: klaviyo_api_key}\n"
        "    audiences:\n"
        "      champions: KlChmp\n",
        1,
    )
    config = tmp_path / "pipeline.yaml"
    config.write_text(text)
    args = _parse_args(["--data", str(tmp_path), "--config", str(config)], {})
    assert args.klaviyo_port == 8713
    assert config_list_ids(config, kind="klaviyo") == ["KlChmp", "kl-at-risk"]
    assert "KlChmp" not in config_list_ids(config, kind="mailchimp")
    args.klaviyo_port = 0
    with build_klaviyo(args) as klaviyo:
        assert klaviyo.list_ids == ["KlChmp", "kl-at-risk"]
