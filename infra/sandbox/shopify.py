"""A Shopify Admin REST style customers API on loopback, for tests.

Wire facts: ``docs/platforms.md``, *Shopify*.

Routes:

* ``POST /admin/oauth/access_token`` — form or JSON body. ``grant_type=client_credentials``
  (``client_id``, ``client_secret``) → ``{access_token, scope, expires_in: 86399}``;
  ``grant_type=refresh_token`` (expiring offline tokens) → a 60-minute ``access_token`` and a new
  ``refresh_token``: the refresh token **rotates on every use** and the old one is void.
  Errors: 400/401 ``{"error","error_description"}``.
* ``GET /admin/api/{version}/customers.json`` — the parameters of the real endpoint only
  (``ids, since_id, created_at_min/max, updated_at_min/max, limit, fields, page_info``).
  Pages come in **id order**, whatever the filters: this endpoint has no ``order`` parameter,
  so a listing filtered by ``updated_at_min`` is *not* ordered by ``updated_at``.
* ``GET /admin/api/{version}/customers/search.json?query=&order=&limit=&fields=`` — the
  ordered listing: ``order`` is ``<field> asc|desc`` over ``updated_at``, ``created_at``,
  ``id``, ``last_order_date`` (default ``last_order_date desc``); ``query`` takes terms
  ``field:value`` / ``field:>value`` / ``>=`` / ``<`` / ``<=`` over ``updated_at``,
  ``created_at``, ``id``, ``email`` (values optionally quoted), ANDed. Its ``page_info`` is a
  keyset (the last sort value and id seen), so a customer updated mid-run moves to the end of an
  ``updated_at asc`` listing and is read there.

Both reply ``{"customers":[...]}`` and, when more remain, ``Link: <...page_info=...>;
rel="next"`` (plus ``rel="previous"`` after the first page of ``customers.json``); ``limit`` is
1..250 (else 400). A ``page_info`` URL must be used as given: adding a filter next to it is a
400. A parameter the endpoint does not take is a 400 naming it: stricter than Shopify (which may
ignore it), so that a client relying on a parameter that does nothing fails in tests.

Auth: header ``X-Shopify-Access-Token`` (static ``access_tokens`` or ones issued above); a bad or
expired token gets 401 ``{"errors":"[API] Invalid API key or access token ..."}``.
Rate limit: a leaky bucket of ``bucket_size`` (40) draining ``leak_rate`` (2) requests/s; every
reply says ``X-Shopify-Shop-Api-Call-Limit: <used>/<size>``; a full bucket gets 429 with
``Retry-After: 2.0`` (float seconds).
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
import secrets
import threading
import time
from collections import deque
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlencode

from infra.sandbox._http import Request, Response, StandInServer, json_response

TOKEN_PATH = "/admin/oauth/access_token"
_CUSTOMERS = re.compile(r"^/admin/api/(?P<version>\d{4}-\d{2})/customers\.json$")
_SEARCH = re.compile(r"^/admin/api/(?P<version>\d{4}-\d{2})/customers/search\.json$")
MAX_LIMIT = 250
DEFAULT_LIMIT = 50
LIST_PARAMS = frozenset(
    {
        "ids",
        "since_id",
        "created_at_min",
        "created_at_max",
        "updated_at_min",
        "updated_at_max",
        "limit",
        "fields",
        "page_info",
    }
)
SEARCH_PARAMS = frozenset({"query", "order", "limit", "fields", "page_info"})
SEARCH_FIELDS = ("updated_at", "created_at", "id", "last_order_date")
QUERY_FIELDS = frozenset({"updated_at", "created_at", "id", "email"})
_TERM = re.compile(r"^(?P<field>[a-z_]+):(?P<op>>=|<=|>|<)?(?P<value>.+)$")
INVALID_TOKEN = "[API] Invalid API key or access token (unrecognized login or wrong password)"


def shopify_time(moment: datetime) -> str:
    """Shopify's timestamp spelling (shop-local offset; the stand-in's shop runs on UTC-4)."""
    local = moment.astimezone(UTC).timestamp() - 4 * 3600
    return datetime.fromtimestamp(local, UTC).strftime("%Y-%m-%dT%H:%M:%S") + "-04:00"


def _parse_time(text: str) -> float:
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class ShopifyStandIn(StandInServer):
    """Shopify-style customers REST API on loopback (see module docstring)."""

    name = "shopify"

    def __init__(
        self,
        customers: list[dict[str, Any]],
        *,
        access_tokens: tuple[str, ...] = (),
        client_id: str = "shop-client",
        client_secret: str = "shop-secret",
        refresh_tokens: tuple[str, ...] = (),
        bucket_size: int = 40,
        leak_rate: float = 2.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.client_id = client_id
        self.client_secret = client_secret
        self.bucket_size = bucket_size
        self.leak_rate = leak_rate
        self.token_requests = 0
        self.throttled = 0
        self._lock = threading.RLock()
        self._customers = {int(c["id"]): copy.deepcopy(c) for c in customers}
        self._tokens: dict[str, float] = {t: float("inf") for t in access_tokens}
        self._refresh_tokens = set(refresh_tokens)
        self._level = 0.0
        self._drained_at = time.monotonic()
        self._faults: deque[tuple[int, str | None]] = deque()

    # -- test controls ----------------------------------------------------------------------
    def expire_tokens(self) -> None:
        """Expire every issued (non-static) access token."""
        with self._lock:
            self._tokens = {t: e for t, e in self._tokens.items() if e == float("inf")}

    def fail_next(self, count: int, *, status: int, retry_after: str | None = None) -> None:
        """Make the next ``count`` API calls fail with ``status`` (and ``Retry-After``)."""
        with self._lock:
            self._faults.extend((status, retry_after) for _ in range(count))

    @property
    def valid_refresh_tokens(self) -> set[str]:
        with self._lock:
            return set(self._refresh_tokens)

    # -- HTTP -------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        if request.path == TOKEN_PATH:
            return self._token(request)
        with self._lock:
            if self._faults:
                status, retry_after = self._faults.popleft()
                headers = {} if retry_after is None else {"Retry-After": retry_after}
                return json_response(
                    status, {"errors": f"Injected failure {status}"}, headers=headers
                )
            token = (request.header("x-shopify-access-token") or "").strip()
            if self._tokens.get(token, 0.0) <= time.monotonic():
                return json_response(HTTPStatus.UNAUTHORIZED, {"errors": INVALID_TOKEN})
            now = time.monotonic()
            self._level = max(0.0, self._level - (now - self._drained_at) * self.leak_rate)
            self._drained_at = now
            if self._level + 1 > self.bucket_size:
                self.throttled += 1
                return json_response(
                    HTTPStatus.TOO_MANY_REQUESTS,
                    {
                        "errors": f"Exceeded {self.leak_rate:g} calls per second for api client. "
                        "Reduce request rates to resume uninterrupted service."
                    },
                    headers={
                        "Retry-After": "2.0",
                        "X-Shopify-Shop-Api-Call-Limit": f"{self.bucket_size}/{self.bucket_size}",
                    },
                )
            self._level += 1
            call_limit = {"X-Shopify-Shop-Api-Call-Limit": f"{int(self._level)}/{self.bucket_size}"}
        if request.method != "GET":
            return json_response(HTTPStatus.NOT_FOUND, {"errors": "Not Found"}, headers=call_limit)
        if _CUSTOMERS.match(request.path):
            reply = self._customers_page(request)
        elif _SEARCH.match(request.path):
            reply = self._search_page(request)
        else:
            return json_response(HTTPStatus.NOT_FOUND, {"errors": "Not Found"}, headers=call_limit)
        return Response(
            reply.status, reply.body, reply.content_type, {**reply.headers, **call_limit}
        )

    # -- token endpoint ---------------------------------------------------------------------
    def _token(self, request: Request) -> Response:
        with self._lock:
            self.token_requests += 1
        content_type = (request.header("content-type") or "").split(";")[0].strip()
        if content_type == "application/json":
            form = json.loads(request.body or b"{}")
        else:
            form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        scheme, _, encoded = (request.header("authorization") or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                client_id, _, secret = (
                    base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
                )
            except (binascii.Error, UnicodeDecodeError):
                client_id = secret = None
        if client_id != self.client_id or secret != self.client_secret:
            return json_response(
                HTTPStatus.UNAUTHORIZED,
                {"error": "invalid_client", "error_description": "Client authentication failed"},
            )
        grant = form.get("grant_type")
        reply: dict[str, Any] = {"scope": "read_customers"}
        with self._lock:
            if grant == "client_credentials":
                ttl = 86399
            elif grant == "refresh_token":
                presented = form.get("refresh_token")
                if presented not in self._refresh_tokens:
                    return json_response(
                        HTTPStatus.BAD_REQUEST,
                        {"error": "invalid_grant", "error_description": "refresh token is invalid"},
                    )
                self._refresh_tokens.discard(presented)  # rotates on every use
                rotated = f"shprt_{secrets.token_hex(16)}"
                self._refresh_tokens.add(rotated)
                ttl = 3600
                reply.update(refresh_token=rotated, refresh_token_expires_in=7_776_000)
            else:
                return json_response(
                    HTTPStatus.BAD_REQUEST,
                    {"error": "unsupported_grant_type", "error_description": f"{grant!r}"},
                )
            token = f"shpat_{secrets.token_hex(16)}"
            self._tokens[token] = time.monotonic() + ttl
        reply.update(access_token=token, expires_in=ttl)
        return json_response(HTTPStatus.OK, reply)

    # -- customers --------------------------------------------------------------------------
    def _customers_page(self, request: Request) -> Response:
        """``customers.json``: id order, offset page_info (ids never move)."""
        problem = _unknown_params(request, LIST_PARAMS) or _limit_problem(request)
        if problem is not None:
            return problem
        limit = int(request.query_value("limit") or DEFAULT_LIMIT)
        page_info = request.query_value("page_info")
        if page_info is not None:
            state = _page_state(request, page_info)
            if isinstance(state, Response):
                return state
        else:
            state = {
                "filters": {
                    name: request.query_value(name)
                    for name in sorted(LIST_PARAMS - {"limit", "fields", "page_info"})
                    if request.query_value(name) is not None
                },
                "offset": 0,
            }
        with self._lock:
            rows = sorted(
                (c for c in self._customers.values() if _listed(c, state["filters"])),
                key=lambda c: int(c["id"]),
            )
        offset = int(state["offset"])
        page = [copy.deepcopy(c) for c in rows[offset : offset + limit]]
        links = []
        base = f"{self.url}{request.path}"
        if offset > 0:
            previous = {**state, "offset": max(0, offset - limit)}
            links.append(f'<{base}?{urlencode(_page_query(previous, limit))}>; rel="previous"')
        if offset + limit < len(rows):
            following = {**state, "offset": offset + limit}
            links.append(f'<{base}?{urlencode(_page_query(following, limit))}>; rel="next"')
        headers = {"Link": ", ".join(links)} if links else {}
        return json_response(HTTPStatus.OK, {"customers": page}, headers=headers)

    def _search_page(self, request: Request) -> Response:
        """``customers/search.json``: ordered, keyset page_info (see the module docstring)."""
        problem = _unknown_params(request, SEARCH_PARAMS) or _limit_problem(request)
        if problem is not None:
            return problem
        limit = int(request.query_value("limit") or DEFAULT_LIMIT)
        page_info = request.query_value("page_info")
        if page_info is not None:
            state = _page_state(request, page_info)
            if isinstance(state, Response):
                return state
        else:
            order = (request.query_value("order") or "last_order_date desc").strip().lower()
            field, _, direction = order.partition(" ")
            if field not in SEARCH_FIELDS or direction not in {"asc", "desc"}:
                return _bad("order", f"{order!r} is not a sortable field and direction")
            terms = _parse_query(request.query_value("query") or "")
            if isinstance(terms, Response):
                return terms
            state = {"field": field, "desc": direction == "desc", "terms": terms, "after": None}
        field, descending = state["field"], bool(state["desc"])

        def key(customer: dict[str, Any]) -> tuple[int, float, int]:
            value = _sort_value(customer, field)
            missing = value is None  # nulls last, either direction
            number = 0.0 if value is None else (-value if descending else value)
            return (int(missing), number, int(customer["id"]))

        with self._lock:
            rows = sorted(
                (c for c in self._customers.values() if _matches(c, state["terms"])), key=key
            )
        after = state["after"]
        if after is not None:
            rows = [c for c in rows if list(key(c)) > after]
        page = [copy.deepcopy(c) for c in rows[:limit]]
        headers = {}
        if len(rows) > limit:
            following = {**state, "after": list(key(page[-1]))}
            base = f"{self.url}{request.path}"
            headers["Link"] = f'<{base}?{urlencode(_page_query(following, limit))}>; rel="next"'
        return json_response(HTTPStatus.OK, {"customers": page}, headers=headers)


def _bad(name: str, message: str) -> Response:
    return json_response(HTTPStatus.BAD_REQUEST, {"errors": {name: [message]}})


def _unknown_params(request: Request, accepted: frozenset[str]) -> Response | None:
    unknown = sorted(set(request.query) - accepted)
    if unknown:
        return _bad(unknown[0], f"is not a parameter of {request.path}")
    if request.query_value("page_info") is not None:
        extra = sorted(set(request.query) - {"page_info", "limit"})
        if extra:
            return _bad("page_info", f"cannot be combined with {', '.join(extra)}")
    return None


def _limit_problem(request: Request) -> Response | None:
    raw_limit = request.query_value("limit") or str(DEFAULT_LIMIT)
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        return _bad("limit", f"must be between 1 and {MAX_LIMIT}")
    return None


def _page_state(request: Request, page_info: str) -> dict[str, Any] | Response:
    del request
    try:
        state = json.loads(base64.urlsafe_b64decode(page_info.encode()).decode())
    except (binascii.Error, ValueError):
        return _bad("page_info", "is invalid")
    if not isinstance(state, dict):
        return _bad("page_info", "is invalid")
    return state


def _page_query(state: dict[str, Any], limit: int) -> dict[str, str]:
    token = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
    return {"limit": str(limit), "page_info": token}


def _listed(customer: dict[str, Any], filters: dict[str, str]) -> bool:
    """The ``customers.json`` filters (bounds inclusive; ``ids`` a comma list)."""
    for name, value in filters.items():
        if name == "ids":
            if str(customer["id"]) not in {v.strip() for v in value.split(",")}:
                return False
        elif name == "since_id":
            if int(customer["id"]) <= int(value):
                return False
        else:
            field, _, bound = name.rpartition("_")
            have, want = _parse_time(customer[field]), _parse_time(value)
            if (bound == "min" and have < want) or (bound == "max" and have > want):
                return False
    return True


def _sort_value(customer: dict[str, Any], field: str) -> float | None:
    raw = customer.get(field)
    if raw is None or raw == "":
        return None
    return float(raw) if field == "id" else _parse_time(str(raw))


def _parse_query(text: str) -> list[list[str]] | Response:
    """``field:value`` terms (ANDed); comparators on times and ids, equality on email."""
    terms = []
    for term in text.split():
        match = _TERM.match(term)
        if match is None or match["field"] not in QUERY_FIELDS:
            return _bad("query", f"{term!r} is not a term this stand-in can search")
        value = match["value"].strip("'\"")
        op = match["op"] or ":"
        if match["field"] == "email" and op != ":":
            return _bad("query", f"{term!r}: email takes no comparator")
        if match["field"] in {"updated_at", "created_at"}:
            try:
                _parse_time(value)
            except ValueError:
                return _bad("query", f"{term!r}: {value!r} is not a time")
        terms.append([match["field"], op, value])
    return terms


def _matches(customer: dict[str, Any], terms: list[list[str]]) -> bool:
    for field, op, value in terms:
        if field == "email":
            if str(customer.get("email", "")).lower() != value.lower():
                return False
            continue
        have = _sort_value(customer, field)
        want = float(value) if field == "id" else _parse_time(value)
        if have is None:
            return False
        ok = {
            ":": have == want,
            ">": have > want,
            ">=": have >= want,
            "<": have < want,
            "<=": have <= want,
        }[op]
        if not ok:
            return False
    return True
