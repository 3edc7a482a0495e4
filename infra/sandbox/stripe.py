"""A Stripe-style customers list API on loopback, for tests (``docs/platforms.md``, *Stripe*).

Route: ``GET /v1/customers?limit=&starting_after=&ending_before=&created[gte|gt|lte|lt]=`` with
``Authorization: Bearer <secret key>``. ``limit`` is 1..100 (default 10; anything else is a 400).
Customers come **newest first** (``created`` descending, ties by id descending); the reply is
``{"object":"list","url":"/v1/customers","has_more":bool,"data":[...]}``; pass the last id as
``starting_after`` while ``has_more`` is true. An unknown ``starting_after`` id is a 400
``resource_missing``.

Errors are ``{"error":{"type","code","message","param"?,"doc_url"}}``: 401 for a bad key, 400
``invalid_request_error``, 429 ``rate_limit`` beyond ``requests_per_second`` (a rolling second;
none by default), and injected faults (:meth:`StripeStandIn.fail_next`) that may carry
``Stripe-Should-Retry: true|false``, which clients must obey over the status code.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from infra.sandbox._http import Request, Response, StandInServer, json_response

CUSTOMERS_PATH = "/v1/customers"
MAX_LIMIT = 100
DEFAULT_LIMIT = 10
DOC_URL = "https://stripe.com/docs/error-codes"
_CREATED_OPS: dict[str, Callable[[int, int], bool]] = {
    "created[gte]": lambda have, want: have >= want,
    "created[gt]": lambda have, want: have > want,
    "created[lte]": lambda have, want: have <= want,
    "created[lt]": lambda have, want: have < want,
    "created": lambda have, want: have == want,
}


@dataclass(frozen=True)
class _Fault:
    status: int
    should_retry: bool | None
    code: str


def stripe_error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A Stripe-shaped error reply."""
    error: dict[str, Any] = {"type": type_, "message": message, "doc_url": DOC_URL}
    if code is not None:
        error["code"] = code
    if param is not None:
        error["param"] = param
    return json_response(status, {"error": error}, headers=headers)


class StripeStandIn(StandInServer):
    """Stripe-style ``/v1/customers`` list on loopback (see module docstring)."""

    name = "stripe"

    def __init__(
        self,
        customers: list[dict[str, Any]],
        *,
        api_key: str = "sk_test_sandbox",
        requests_per_second: float | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.api_key = api_key
        self.requests_per_second = requests_per_second
        self.versions_seen: set[str] = set()
        self.throttled = 0
        self._lock = threading.RLock()
        self._customers = {str(c["id"]): copy.deepcopy(c) for c in customers}
        self._recent: deque[float] = deque()
        self._faults: deque[_Fault] = deque()

    def fail_next(
        self, count: int, *, status: int, should_retry: bool | None = None, code: str = "api_error"
    ) -> None:
        """Make the next ``count`` calls fail; ``should_retry`` sets ``Stripe-Should-Retry``."""
        with self._lock:
            self._faults.extend(_Fault(status, should_retry, code) for _ in range(count))

    def add_customer(self, customer: dict[str, Any]) -> None:
        with self._lock:
            self._customers[str(customer["id"])] = copy.deepcopy(customer)

    # -- HTTP -------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        scheme, _, key = (request.header("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or key.strip() != self.api_key:
            shown = key.strip()[-4:] if key.strip() else ""
            return stripe_error(
                HTTPStatus.UNAUTHORIZED, f"Invalid API Key provided: sk_test_****{shown}"
            )
        version = request.header("stripe-version")
        with self._lock:
            if version:
                self.versions_seen.add(version)
            if self._faults:
                fault = self._faults.popleft()
                headers = (
                    {}
                    if fault.should_retry is None
                    else {"Stripe-Should-Retry": "true" if fault.should_retry else "false"}
                )
                kind = "api_error" if fault.status >= 500 else "invalid_request_error"
                return stripe_error(
                    fault.status,
                    f"Injected failure {fault.status}",
                    type_=kind,
                    code=fault.code,
                    headers=headers,
                )
            if self.requests_per_second is not None:
                now = time.monotonic()
                while self._recent and now - self._recent[0] >= 1.0:
                    self._recent.popleft()
                if len(self._recent) >= max(1, int(self.requests_per_second)):
                    self.throttled += 1
                    return stripe_error(
                        HTTPStatus.TOO_MANY_REQUESTS,
                        "Request rate limit exceeded. Learn more about rate limits here "
                        "https://stripe.com/docs/rate-limits.",
                        code="rate_limit",
                    )
                self._recent.append(now)
        if request.path.rstrip("/") != CUSTOMERS_PATH or request.method != "GET":
            return stripe_error(
                HTTPStatus.NOT_FOUND, f"Unrecognized request URL ({request.method}: {request.path})"
            )
        return self._list(request)

    def _list(self, request: Request) -> Response:
        raw_limit = request.query_value("limit")
        limit = DEFAULT_LIMIT
        if raw_limit is not None:
            if not raw_limit.isdigit():
                return stripe_error(
                    400,
                    "Invalid integer: " + raw_limit,
                    param="limit",
                    code="parameter_invalid_integer",
                )
            limit = int(raw_limit)
            if not 1 <= limit <= MAX_LIMIT:
                return stripe_error(
                    400,
                    f"This value must be between 1 and {MAX_LIMIT}, inclusive.",
                    param="limit",
                    code="parameter_invalid_integer",
                )
        filters = []
        for name, op in _CREATED_OPS.items():
            value = request.query_value(name)
            if value is None:
                continue
            if not value.isdigit():
                return stripe_error(
                    400, f"Invalid integer: {value}", param=name, code="parameter_invalid_integer"
                )
            filters.append((op, int(value)))
        with self._lock:
            rows = [
                c
                for c in self._customers.values()
                if all(op(int(c["created"]), want) for op, want in filters)
            ]
        rows.sort(key=lambda c: (int(c["created"]), str(c["id"])), reverse=True)
        start = 0
        after = request.query_value("starting_after")
        before = request.query_value("ending_before")
        if after is not None and before is not None:
            return stripe_error(
                400, "You may only specify one of starting_after and ending_before."
            )
        ids = [str(c["id"]) for c in rows]
        if after is not None:
            if after not in ids:
                return stripe_error(
                    400,
                    f"No such customer: '{after}'",
                    param="starting_after",
                    code="resource_missing",
                )
            start = ids.index(after) + 1
            page = rows[start : start + limit]
            has_more = start + limit < len(rows)
        elif before is not None:
            if before not in ids:
                return stripe_error(
                    400,
                    f"No such customer: '{before}'",
                    param="ending_before",
                    code="resource_missing",
                )
            end = ids.index(before)
            page = rows[max(0, end - limit) : end]
            has_more = end - limit > 0
        else:
            page = rows[:limit]
            has_more = limit < len(rows)
        body = {
            "object": "list",
            "url": CUSTOMERS_PATH,
            "has_more": has_more,
            "data": [copy.deepcopy(c) for c in page],
        }
        return json_response(HTTPStatus.OK, body)
