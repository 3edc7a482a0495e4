"""The Mailchimp stand-in speaks the documented v3 wire format over real loopback HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from infra.sandbox.mailchimp import MailchimpStandIn, subscriber_hash

LIST = "newsletter"
KEY = "demo-key-us1"
PROBLEM_FIELDS = {"type", "title", "status", "detail", "instance"}


@pytest.fixture
def mailchimp() -> Iterator[MailchimpStandIn]:
    with MailchimpStandIn(lists=[LIST]) as server:
        yield server


@pytest.fixture
def client(mailchimp: MailchimpStandIn) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{mailchimp.url}/3.0", auth=("anystring", KEY), timeout=5) as c:
        yield c


def _batch(client: httpx.Client, members: list[dict[str, Any]], **flags: Any) -> dict[str, Any]:
    response = client.post(f"/lists/{LIST}", json={"members": members, **flags})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _member_path(email: str) -> str:
    return f"/lists/{LIST}/members/{subscriber_hash(email)}"


def _subscribe(client: httpx.Client, *emails: str) -> None:
    members = [{"email_address": e, "status": "subscribed"} for e in emails]
    assert _batch(client, members)["total_created"] == len(emails)


# -- batch subscribe / update ---------------------------------------------------------------
def test_batch_creates_then_updates(mailchimp: MailchimpStandIn, client: httpx.Client) -> None:
    members: list[dict[str, Any]] = [
        {"email_address": "a@example.com", "status": "subscribed", "merge_fields": {"FNAME": "A"}},
        {"email_address": " B@Example.com ", "status_if_new": "pending", "tags": ["vip"]},
    ]
    created = _batch(client, members)
    update: list[dict[str, Any]] = [
        {"email_address": "a@example.com", "merge_fields": {"LNAME": "Z"}, "tags": ["new"]},
        {"email_address": "b@example.com", "status_if_new": "subscribed", "tags": ["other"]},
    ]
    updated = _batch(client, update, update_existing=True)

    assert (created["total_created"], created["total_updated"], created["error_count"]) == (2, 0, 0)
    assert [m["status"] for m in created["new_members"]] == ["subscribed", "pending"]
    assert (updated["total_created"], updated["total_updated"]) == (0, 2)
    stored = mailchimp.members(LIST)
    a, b = stored[subscriber_hash("a@example.com")], stored[subscriber_hash("b@example.com")]
    assert a["merge_fields"] == {"FNAME": "A", "LNAME": "Z"}
    assert [t["name"] for t in a["tags"]] == ["new"]
    assert b["status"] == "pending"  # status_if_new does not touch existing members
    assert [t["name"] for t in b["tags"]] == ["vip", "other"]


def test_batch_sync_tags_replaces_tags(mailchimp: MailchimpStandIn, client: httpx.Client) -> None:
    _batch(client, [{"email_address": "t@example.com", "status": "subscribed", "tags": ["x", "y"]}])
    _batch(
        client,
        [{"email_address": "t@example.com", "tags": ["z"]}],
        update_existing=True,
        sync_tags=True,
    )

    tags = mailchimp.members(LIST)[subscriber_hash("t@example.com")]["tags"]
    assert [t["name"] for t in tags] == ["z"]


def test_batch_over_500_members_is_rejected(client: httpx.Client) -> None:
    members = [{"email_address": f"p{i}@example.com", "status": "subscribed"} for i in range(501)]
    response = client.post(f"/lists/{LIST}", json={"members": members})

    assert response.status_code == 400
    body = response.json()
    assert set(body) >= PROBLEM_FIELDS and body["status"] == 400
    assert "500" in body["detail"]
    assert response.headers["content-type"].startswith("application/problem+json")


def test_malformed_batch_is_invalid_resource(client: httpx.Client) -> None:
    not_a_list = client.post(f"/lists/{LIST}", json={"members": "a@example.com"})
    broken_json = client.post(f"/lists/{LIST}", content=b"{nope", headers={"Content-Type": "x"})
    no_email = client.post(f"/lists/{LIST}", json={"members": [{"status": "subscribed"}]})

    for response in (not_a_list, broken_json, no_email):
        assert response.status_code == 400
        assert response.json()["title"] == "Invalid Resource"
        assert response.json()["errors"][0].keys() == {"field", "message"}
    assert no_email.json()["errors"][0]["field"] == "members.0.email_address"


def test_batch_reports_per_member_errors(client: httpx.Client) -> None:
    _subscribe(client, "known@example.com")
    members: list[dict[str, Any]] = [
        {"email_address": "not-an-email", "status": "subscribed"},
        {"email_address": "jane@", "status": "subscribed"},
        {"email_address": "x@localhost", "status": "subscribed"},
        {"email_address": "KNOWN@example.com", "status": "subscribed"},
        {"email_address": "fine@example.com", "status": "subscribed"},
    ]
    body = _batch(client, members, update_existing=False)

    assert body["total_created"] == 1 and body["error_count"] == 4
    errors = {e["email_address"]: e for e in body["errors"]}
    for fake in ("not-an-email", "jane@", "x@localhost"):
        assert errors[fake]["error_code"] == "ERROR_GENERIC"
        assert "looks fake or invalid, please enter a real email address" in errors[fake]["error"]
    assert errors["KNOWN@example.com"]["error_code"] == "ERROR_CONTACT_EXISTS"


# -- consent ----------------------------------------------------------------------------------
def test_unsubscribed_member_cannot_be_resubscribed(
    mailchimp: MailchimpStandIn, client: httpx.Client
) -> None:
    _subscribe(client, "gone@example.com")
    mailchimp.member_unsubscribes(LIST, "Gone@Example.com")

    batch = _batch(
        client,
        [{"email_address": "gone@example.com", "status": "subscribed"}],
        update_existing=True,
    )
    put = client.put(
        _member_path("gone@example.com"),
        json={"email_address": "gone@example.com", "status": "subscribed"},
    )
    pending = client.put(
        _member_path("gone@example.com"),
        json={"email_address": "gone@example.com", "status": "pending"},
    )

    assert batch["error_count"] == 1 and batch["errors"][0]["error_code"] == "ERROR_GENERIC"
    assert "compliance state" in batch["errors"][0]["error"]
    assert put.status_code == 400 and put.json()["title"] == "Member In Compliance State"
    assert pending.status_code == 200 and pending.json()["status"] == "pending"


def test_patch_unsubscribes(client: httpx.Client) -> None:
    _subscribe(client, "leaver@example.com")

    patched = client.patch(_member_path("leaver@example.com"), json={"status": "unsubscribed"})
    fetched = client.get(_member_path("leaver@example.com"))
    listed = client.get(f"/lists/{LIST}/members", params={"status": "unsubscribed"}).json()

    assert patched.status_code == 200 and patched.json()["status"] == "unsubscribed"
    assert fetched.json()["status"] == "unsubscribed"
    assert [m["email_address"] for m in listed["members"]] == ["leaver@example.com"]


def test_delete_permanent_forgets_the_email(
    mailchimp: MailchimpStandIn, client: httpx.Client
) -> None:
    _subscribe(client, "erase@example.com")

    deleted = client.post(f"{_member_path('erase@example.com')}/actions/delete-permanent")
    fetched = client.get(_member_path("erase@example.com"))
    batch = _batch(client, [{"email_address": "erase@example.com", "status_if_new": "pending"}])
    put = client.put(
        _member_path("erase@example.com"),
        json={"email_address": "erase@example.com", "status_if_new": "pending"},
    )

    assert deleted.status_code == 204 and deleted.content == b""
    assert fetched.status_code == 404
    assert batch["error_count"] == 1
    assert "permanently deleted" in batch["errors"][0]["error"]
    assert put.status_code == 400 and put.json()["title"] == "Forgotten Email Not Subscribed"
    assert mailchimp.members(LIST) == {}


def test_archive_then_re_add(mailchimp: MailchimpStandIn, client: httpx.Client) -> None:
    _subscribe(client, "arch@example.com")

    deleted = client.delete(_member_path("arch@example.com"))
    fetched = client.get(_member_path("arch@example.com")).json()
    listed = client.get(f"/lists/{LIST}/members").json()
    re_added = _batch(client, [{"email_address": "arch@example.com", "status": "subscribed"}])

    assert deleted.status_code == 204
    assert fetched["status"] == "archived"
    assert listed["total_items"] == 0
    assert re_added["total_created"] == 1


# -- single-member upsert and reads -------------------------------------------------------------
def test_put_is_an_idempotent_upsert(client: httpx.Client) -> None:
    email = "Jane.Doe@Example.com"
    body = {"email_address": email, "status_if_new": "subscribed", "merge_fields": {"FNAME": "J"}}

    first = client.put(_member_path(email), json=body)
    second = client.put(_member_path(email), json={**body, "status_if_new": "unsubscribed"})
    by_email = client.get(f"/lists/{LIST}/members/{email}")

    assert first.status_code == second.status_code == 200
    assert first.json()["id"] == subscriber_hash("jane.doe@example.com")
    assert second.json()["status"] == "subscribed"
    assert by_email.json()["merge_fields"] == {"FNAME": "J"}


def test_put_with_mismatched_hash_is_rejected(client: httpx.Client) -> None:
    response = client.put(
        _member_path("one@example.com"),
        json={"email_address": "two@example.com", "status": "subscribed"},
    )

    assert response.status_code == 400
    assert response.json()["title"] == "Invalid Resource"
    assert "subscriber hash" in response.json()["detail"]


def test_members_paging_and_count_limit(client: httpx.Client) -> None:
    _subscribe(client, *(f"m{i}@example.com" for i in range(7)))

    first = client.get(f"/lists/{LIST}/members", params={"count": 5, "offset": 0}).json()
    second = client.get(f"/lists/{LIST}/members", params={"count": 5, "offset": 5}).json()
    since = client.get(
        f"/lists/{LIST}/members", params={"since_last_changed": "2000-01-01T00:00:00+00:00"}
    ).json()
    too_many = client.get(f"/lists/{LIST}/members", params={"count": 1001})

    assert first["total_items"] == second["total_items"] == 7
    assert len(first["members"]) == 5 and len(second["members"]) == 2
    assert first["list_id"] == LIST
    assert since["total_items"] == 7
    assert too_many.status_code == 400


# -- auth, unknown lists, faults, concurrency ---------------------------------------------------
def test_bad_or_missing_api_key_is_401(mailchimp: MailchimpStandIn) -> None:
    base = f"{mailchimp.url}/3.0/lists/{LIST}/members"
    wrong = httpx.get(base, auth=("anystring", "wrong-key-us1"))
    missing = httpx.get(base)
    bearer = httpx.get(base, headers={"Authorization": f"Bearer {KEY}"})

    for response in (wrong, missing):
        assert response.status_code == 401
        assert set(response.json()) >= PROBLEM_FIELDS
    assert wrong.json()["title"] == "API Key Invalid"
    assert bearer.status_code == 200


def test_unknown_list_is_404(client: httpx.Client) -> None:
    response = client.get("/lists/does-not-exist/members")
    batch = client.post("/lists/does-not-exist", json={"members": []})

    for rejected in (response, batch):
        assert rejected.status_code == 404
        assert rejected.json()["title"] == "Resource Not Found"
        assert "does-not-exist" in rejected.json()["detail"]


def test_fail_next_then_success(mailchimp: MailchimpStandIn, client: httpx.Client) -> None:
    mailchimp.fail_next(1, status=503)

    failed = client.get(f"/lists/{LIST}/members")
    ok = client.get(f"/lists/{LIST}/members")

    assert failed.status_code == 503 and failed.json()["status"] == 503
    assert ok.status_code == 200


def test_too_many_concurrent_requests_get_429() -> None:
    workers = 8
    barrier = threading.Barrier(workers, timeout=5)
    statuses: list[int] = []
    retry_after: list[str | None] = []
    lock = threading.Lock()

    with MailchimpStandIn(lists=[LIST], max_connections=3, response_delay=0.4) as server:
        url = f"{server.url}/3.0/lists/{LIST}/members"

        def call() -> None:
            with httpx.Client(auth=("any", KEY), timeout=5) as http:
                barrier.wait()
                response = http.get(url)
            with lock:
                statuses.append(response.status_code)
                retry_after.append(response.headers.get("Retry-After"))

        threads = [threading.Thread(target=call, daemon=True) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        peak = server.max_in_flight

    assert len(statuses) == workers
    assert set(statuses) == {200, 429}
    assert retry_after == [None] * workers
    assert peak > 3


def test_member_requests_count_every_payload_per_member(
    mailchimp: MailchimpStandIn, client: httpx.Client
) -> None:
    _batch(client, [{"email_address": "A@example.com", "status": "subscribed"},
                    {"email_address": "not-an-email", "status": "subscribed"}])  # fmt: skip
    _batch(client, [{"email_address": "a@example.com", "status": "unsubscribed"}],
           update_existing=True)  # fmt: skip
    assert mailchimp.member_requests(LIST) == [
        ("a@example.com", "subscribed"),
        ("not-an-email", "subscribed"),  # refused by the platform, but it was sent
        ("a@example.com", "unsubscribed"),
    ]
    assert mailchimp.sends_per_member(LIST) == {"a@example.com": 2, "not-an-email": 1}
    assert mailchimp.member_requests("other-list") == []


# -- merge fields, reads for a two-way sync, strict parameters ----------------------------------
def test_merge_fields_list_create_and_refuse(client: httpx.Client) -> None:
    listed = client.get(f"/lists/{LIST}/merge-fields", params={"count": 100}).json()
    created = client.post(
        f"/lists/{LIST}/merge-fields", json={"tag": "LTV", "name": "Lifetime", "type": "number"}
    )
    duplicate = client.post(
        f"/lists/{LIST}/merge-fields", json={"tag": "LTV", "name": "Again", "type": "text"}
    )
    bad_type = client.post(f"/lists/{LIST}/merge-fields", json={"name": "X", "type": "colour"})
    numbers = client.get(f"/lists/{LIST}/merge-fields", params={"type": "number"}).json()

    assert [f["tag"] for f in listed["merge_fields"]] == [
        "FNAME", "LNAME", "ADDRESS", "PHONE", "BIRTHDAY",
    ]  # fmt: skip
    assert created.status_code == 200
    assert created.json()["type"] == "number" and created.json()["total_items"] == 6
    assert duplicate.status_code == bad_type.status_code == 400
    assert "already exists" in duplicate.json()["detail"]
    assert [f["tag"] for f in numbers["merge_fields"]] == ["LTV"]


def test_member_merge_values_are_checked_per_member(client: httpx.Client) -> None:
    client.post(f"/lists/{LIST}/merge-fields", json={"tag": "LTV", "name": "L", "type": "number"})
    client.post(f"/lists/{LIST}/merge-fields", json={"tag": "SEEN", "name": "S", "type": "date"})
    members: list[dict[str, Any]] = [
        {"email_address": "ok@example.com", "status": "subscribed",
         "merge_fields": {"LTV": "12.5", "SEEN": "2026-01-02"}},
        {"email_address": "nan@example.com", "status": "subscribed", "merge_fields": {"LTV": "x"}},
        {"email_address": "day@example.com", "status": "subscribed",
         "merge_fields": {"SEEN": "02/01/2026"}},
        {"email_address": "new@example.com", "status": "subscribed", "merge_fields": {"NEW": 1}},
        {"email_address": "bool@example.com", "status": "subscribed",
         "merge_fields": {"FNAME": True}},
    ]  # fmt: skip
    body = _batch(client, members)
    single = client.put(
        _member_path("one@example.com"),
        json={"email_address": "one@example.com", "status": "subscribed",
              "merge_fields": {"NEW": "x"}},
    )  # fmt: skip

    assert body["total_created"] == 1
    assert body["new_members"][0]["merge_fields"] == {"LTV": 12.5, "SEEN": "2026-01-02"}
    fields = {e["email_address"]: e["field"] for e in body["errors"]}
    assert fields == {
        "nan@example.com": "LTV",
        "day@example.com": "SEEN",
        "new@example.com": "NEW",
        "bool@example.com": "FNAME",
    }
    assert single.status_code == 400 and single.json()["errors"][0]["field"] == "NEW"


def test_required_merge_field_unless_validation_is_skipped(client: httpx.Client) -> None:
    client.post(
        f"/lists/{LIST}/merge-fields",
        json={"tag": "CITY", "name": "City", "type": "text", "required": True},
    )
    member = [{"email_address": "r@example.com", "status": "subscribed"}]

    refused = _batch(client, member)
    skipped = client.post(
        f"/lists/{LIST}", params={"skip_merge_validation": "true"}, json={"members": member}
    ).json()

    assert refused["errors"][0]["field"] == "CITY"
    assert skipped["total_created"] == 1


def test_member_reads_by_status_since_sorted_with_fields(
    mailchimp: MailchimpStandIn, client: httpx.Client
) -> None:
    _subscribe(client, "a@example.com", "b@example.com", "c@example.com")
    stamp = mailchimp.members(LIST)[subscriber_hash("c@example.com")]["last_changed"]
    mailchimp.member_unsubscribes(LIST, "b@example.com")
    mailchimp.member_reports_spam(LIST, "a@example.com")
    mailchimp.member_bounces(LIST, "c@example.com")

    unsubscribed = client.get(
        f"/lists/{LIST}/members",
        params={"status": "unsubscribed", "sort_field": "last_changed", "sort_dir": "DESC",
                "fields": "members.email_address,members.unsubscribe_reason,total_items"},
    ).json()  # fmt: skip
    cleaned = client.get(f"/lists/{LIST}/members", params={"status": "cleaned"}).json()
    after = client.get(
        f"/lists/{LIST}/members", params={"since_last_changed": "2999-01-01T00:00:00Z"}
    )

    assert set(unsubscribed) == {"members", "total_items"}  # only the fields asked for
    assert unsubscribed["total_items"] == 2
    assert sorted(unsubscribed["members"], key=lambda m: m["email_address"]) == [
        {"email_address": "a@example.com", "unsubscribe_reason": "N/A (Abuse Complaint)"},
        {"email_address": "b@example.com"},
    ]
    assert [m["email_address"] for m in cleaned["members"]] == ["c@example.com"]
    assert after.json()["total_items"] == 0
    assert stamp  # every member carries a real last_changed, never ""


def test_since_last_changed_is_strictly_after(client: httpx.Client) -> None:
    _subscribe(client, "s@example.com")
    stamp = client.get(_member_path("s@example.com")).json()["last_changed"]

    at = client.get(f"/lists/{LIST}/members", params={"since_last_changed": stamp}).json()
    before = client.get(f"/lists/{LIST}/members", params={"before_last_changed": stamp}).json()

    assert at["total_items"] == 0 and before["total_items"] == 0


def test_an_edit_reorders_a_sorted_read_between_pages(
    mailchimp: MailchimpStandIn, client: httpx.Client
) -> None:
    _subscribe(client, *(f"o{i}@example.com" for i in range(4)))
    edits = iter(["o0@example.com"])

    def edit(list_id: str, offset: int) -> None:
        email = next(edits, None)
        if email is not None:
            time.sleep(1.05)  # last_changed has one-second resolution, as in Mailchimp
            mailchimp.marketer_edits(list_id, email, FNAME="moved")

    mailchimp.on_members_page = edit
    params = {"sort_field": "last_changed", "count": 2}
    first = client.get(f"/lists/{LIST}/members", params={**params, "offset": 0}).json()
    second = client.get(f"/lists/{LIST}/members", params={**params, "offset": 2}).json()

    assert [m["email_address"] for m in first["members"]] == ["o0@example.com", "o1@example.com"]
    # o0 moved to the end: o2 slid into the first page's range and is skipped by offset 2.
    assert [m["email_address"] for m in second["members"]] == ["o3@example.com", "o0@example.com"]


def test_unknown_and_unimplemented_query_parameters_are_refused(client: httpx.Client) -> None:
    unknown = client.get(f"/lists/{LIST}/members", params={"since": "2026-01-01"})
    unimplemented = client.get(f"/lists/{LIST}/members", params={"vip_only": "true"})
    on_batch = client.post(f"/lists/{LIST}", params={"count": 5}, json={"members": []})
    ping = client.get("/ping", params={"x": 1})

    for response in (unknown, unimplemented, on_batch, ping):
        assert response.status_code == 400
        assert response.json()["title"] == "Invalid Resource"
    assert "not implement" in unimplemented.json()["detail"]


def test_member_tags_read(client: httpx.Client) -> None:
    _batch(client, [{"email_address": "t@example.com", "status": "subscribed", "tags": ["a"]}])
    client.post(f"{_member_path('t@example.com')}/tags",
                json={"tags": [{"name": "b", "status": "active"}]})  # fmt: skip

    tags = client.get(f"{_member_path('t@example.com')}/tags").json()

    assert [t["name"] for t in tags["tags"]] == ["a", "b"] and tags["total_items"] == 2


def test_the_eleventh_simultaneous_request_gets_the_documented_429() -> None:
    workers = 11
    barrier = threading.Barrier(workers, timeout=5)
    statuses: list[int] = []
    lock = threading.Lock()

    with MailchimpStandIn(lists=[LIST], response_delay=1.5) as server:  # default ceiling: 10
        url = f"{server.url}/3.0/lists/{LIST}/members"

        def call() -> None:
            with httpx.Client(auth=("any", KEY), timeout=5) as http:
                barrier.wait()
                response = http.get(url)
            with lock:
                statuses.append(response.status_code)

        threads = [threading.Thread(target=call, daemon=True) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        refused = server.rejected_over_ceiling

    assert sorted(statuses) == [200] * 10 + [429]
    assert refused == 1
