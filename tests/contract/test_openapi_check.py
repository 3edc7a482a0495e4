"""The contract checker itself: each check it adds to openapi-core can fail."""

from __future__ import annotations

import json

import pytest

from tests.contract.openapi_check import ContractChecker, ContractViolation, HttpExchange, load_spec

KLAVIYO = "klaviyo_2026-07-15.audience_sync.json"
HEADERS = {"Authorization": "Klaviyo-API-Key pk_test", "revision": "2026-07-15"}
JSONAPI = "application/vnd.api+json"
ADD_BODY = json.dumps({"data": [{"type": "profile", "id": "01H"}]}).encode()


@pytest.fixture(scope="module")
def checker() -> ContractChecker:
    return ContractChecker(load_spec(KLAVIYO))


def _add(**changes: object) -> HttpExchange:
    base: dict[str, object] = dict(
        method="POST",
        path="/api/lists/Y6nRLr/relationships/profiles",
        request_headers=HEADERS,
        request_body=ADD_BODY,
        request_content_type=JSONAPI,
        status=204,
    )
    base.update(changes)
    return HttpExchange(**base)  # type: ignore[arg-type]


def test_a_valid_exchange_passes(checker: ContractChecker) -> None:
    checker.check(_add())


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"query": {"foo": ["1"]}}, "query parameter 'foo' is not declared"),
        ({"request_headers": {"Authorization": "Klaviyo-API-Key pk"}}, "'revision' was not sent"),
        ({"request_body": b'{"data": [{"type": "list", "id": "x"}]}'}, "InvalidRequestBody"),
        ({"path": "/api/nothing-here"}, "no such operation"),
        ({"status": 200}, "status 200 is not declared"),
        ({"response_body": b"{}", "response_content_type": JSONAPI}, "declares no body"),
    ],
)
def test_each_check_can_fail(
    checker: ContractChecker, changes: dict[str, object], expected: str
) -> None:
    with pytest.raises(ContractViolation, match=expected):
        checker.check(_add(**changes))


def test_error_bodies_are_checked_against_the_4xx_catch_all(checker: ContractChecker) -> None:
    incomplete = json.dumps({"errors": [{"id": "1", "code": "throttled", "title": "t"}]})
    with pytest.raises(ContractViolation, match="'detail' is a required property"):
        checker.check_response(
            _add(status=429, response_body=incomplete.encode(), response_content_type=JSONAPI)
        )


def test_a_get_with_a_body_is_a_violation(checker: ContractChecker) -> None:
    exchange = HttpExchange(
        "GET",
        "/api/lists",
        request_headers=HEADERS,
        request_body=b"{}",
        request_content_type=JSONAPI,
    )
    assert "the operation takes no request body, but one was sent" in checker.request_problems(
        exchange
    )
