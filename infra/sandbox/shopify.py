"""A Shopify Admin REST style customers API on loopback, for tests (``API_NOTES.md`` §6.2, §7).

Routes:

* ``POST /admin/oauth/access_token`` — form or JSON body. ``grant_type=client_credentials``
  (``client_id``, ``client_secret``) → ``{access_token, scope, expires_in: 86399}``;
  ``grant_type=refresh_token`` (expiring offline tokens) → a 60-minute ``access_token`` and a new
  ``refresh_token``: the refresh token **rotates on every use** and the old one is void.
  Errors: 400/401 ``{"error","error_description"}``.
* ``GET /admin/api/{version}/customers.json?limit=&updated_at_min=&order=`` — ``limit`` 1..250
  (else 400), ``order`` ``id asc`` (default) or ``updated_at asc``. Replies
  ``{"customers":[...]}`` and, when more remain, ``Link: <...page_info=...>; rel="next"`` (plus
  ``rel="previous"`` after the first page). A ``page_info`` URL must be used as given: adding
  any filter next to it is a 400.

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
MAX_LIMIT = 250
DEFAULT_LIMIT = 50
ORDERS = {"id asc": "id", "updated_at asc": "updated_at"}
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
        match = _CUSTOMERS.match(request.path)
        if match is None or request.method != "GET":
            return json_response(HTTPStatus.NOT_FOUND, {"errors": "Not Found"}, headers=call_limit)
        reply = self._customers_page(request)
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
        raw_limit = request.query_value("limit") or str(DEFAULT_LIMIT)
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            return json_response(
                HTTPStatus.BAD_REQUEST,
                {"errors": {"limit": [f"must be between 1 and {MAX_LIMIT}"]}},
            )
        limit = int(raw_limit)
        page_info = request.query_value("page_info")
        if page_info is not None:
            extra = sorted(set(request.query) - {"page_info", "limit"})
            if extra:
                return json_response(
                    HTTPStatus.BAD_REQUEST,
                    {"errors": {"page_info": [f"cannot be combined with {', '.join(extra)}"]}},
                )
            try:
                state = json.loads(base64.urlsafe_b64decode(page_info.encode()).decode())
            except (binascii.Error, ValueError):
                return json_response(
                    HTTPStatus.BAD_REQUEST, {"errors": {"page_info": ["is invalid"]}}
                )
        else:
            order = request.query_value("order") or "id asc"
            if order not in ORDERS:
                return json_response(
                    HTTPStatus.BAD_REQUEST, {"errors": {"order": [f"{order!r} is not supported"]}}
                )
            state = {
                "order": order,
                "min": request.query_value("updated_at_min"),
                "offset": 0,
            }
        with self._lock:
            rows = [
                c
                for c in self._customers.values()
                if state["min"] is None or _parse_time(c["updated_at"]) >= _parse_time(state["min"])
            ]
        key = ORDERS[state["order"]]
        if key == "updated_at":
            rows.sort(key=lambda c: (_parse_time(c["updated_at"]), int(c["id"])))
        else:
            rows.sort(key=lambda c: int(c["id"]))
        offset = int(state["offset"])
        page = [copy.deepcopy(c) for c in rows[offset : offset + limit]]
        links = []
        base = f"{self.url}{request.path}"
        if offset > 0:
            previous = {**state, "offset": max(0, offset - limit)}
            links.append(f'<{base}?{urlencode(self._page_query(previous, limit))}>; rel="previous"')
        if offset + limit < len(rows):
            following = {**state, "offset": offset + limit}
            links.append(f'<{base}?{urlencode(self._page_query(following, limit))}>; rel="next"')
        headers = {"Link": ", ".join(links)} if links else {}
        return json_response(HTTPStatus.OK, {"customers": page}, headers=headers)

    @staticmethod
    def _page_query(state: dict[str, Any], limit: int) -> dict[str, str]:
        token = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
        return {"limit": str(limit), "page_info": token}
