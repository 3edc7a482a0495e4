"""A Salesforce-style REST query API on loopback, for tests (``docs/platforms.md``, *Salesforce*).

Routes:

* ``POST /services/oauth2/token`` — form-encoded; ``grant_type=client_credentials`` (client id and
  secret via HTTP Basic or the body) or ``grant_type=refresh_token``. 200
  ``{access_token, instance_url, id, token_type, issued_at, signature, scope}`` with **no**
  ``expires_in`` (the lifetime is the org's session timeout). With ``rotate_refresh_tokens`` a
  refresh reply carries a new ``refresh_token`` and the old one stops working. Errors are RFC 6749
  ``{"error","error_description"}``.
* ``GET /services/data/vXX.X/query?q=<SOQL>`` — a small SOQL subset: ``SELECT f1, f2 FROM Obj
  [WHERE cond [AND cond ...]] [ORDER BY field [ASC|DESC]]`` where ``cond`` is ``Field op value``
  (``= != > >= < <=``; unquoted datetimes, 'strings', numbers, true/false/null). Up to
  ``batchSize`` records per reply (``Sforce-Query-Options: batchSize=200..2000``, default 2000):
  ``{"totalSize","done","nextRecordsUrl"?,"records":[{"attributes":{"type","url"},...}]}``.
* ``GET /services/data/vXX.X/query/<locator>-<offset>`` — the next batch (takes no parameters).

Errors are a JSON **array** ``[{"message","errorCode","fields"?}]``: 401 ``INVALID_SESSION_ID``
for an expired or unknown session, 400 ``MALFORMED_QUERY``, 404 ``NOT_FOUND``, and 403
``REQUEST_LIMIT_EXCEEDED`` once the daily org quota (``daily_limit``) is spent. Every API reply
carries ``Sforce-Limit-Info: api-usage=<used>/<limit>``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from infra.sandbox._http import Request, Response, StandInServer, json_response

TOKEN_PATH = "/services/oauth2/token"
_QUERY_PATH = re.compile(r"^/services/data/(?P<version>v\d+\.\d)/query(?:/(?P<locator>[^/]+))?/?$")
_SOQL = re.compile(
    r"^\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<object>\w+)"
    r"(?:\s+WHERE\s+(?P<where>.+?))?"
    r"(?:\s+ORDER\s+BY\s+(?P<order>\w+)(?:\s+(?P<direction>ASC|DESC))?)?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_CONDITION = re.compile(
    r"^\s*\(*\s*(?P<field>\w+)\s*(?P<op>!=|>=|<=|=|>|<)\s*(?P<value>.+?)\s*\)*\s*$"
)
DEFAULT_BATCH = 2000
MIN_BATCH, MAX_BATCH = 200, 2000
DEFAULT_DAILY_LIMIT = 100_000


class SoqlError(ValueError):
    """A query the stand-in rejects with ``MALFORMED_QUERY``."""


def sf_error(status: int, code: str, message: str) -> Response:
    """A Salesforce-shaped error reply: a JSON array of error objects."""
    return json_response(status, [{"message": message, "errorCode": code, "fields": []}])


def sf_datetime(moment: datetime) -> str:
    """Salesforce's datetime spelling, e.g. ``2024-05-01T10:00:00.000+0000``."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def _parse_time(text: str) -> datetime:
    value = text.strip()
    if re.search(r"[+-]\d{4}$", value):  # +0000 -> +00:00
        value = value[:-2] + ":" + value[-2:]
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _literal(text: str) -> Any:
    value = text.strip()
    if value.startswith("'") and value.endswith("'") and len(value) >= 2:
        return value[1:-1].replace("\\'", "'")
    lowered = value.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    if lowered == "null":
        return None
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        return float(value)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T[\d:.]+(Z|[+-]\d{2}:?\d{2})", value):
        return _parse_time(value)
    raise SoqlError(f"unexpected token: '{value}'")


def _comparable(value: Any, like: Any) -> Any:
    """A record value made comparable with a filter literal."""
    if value is None:
        return None
    if isinstance(like, datetime):
        return _parse_time(str(value))
    if isinstance(like, float):
        return float(value)
    return value


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a is not None and b is not None and a > b,
    ">=": lambda a, b: a is not None and b is not None and a >= b,
    "<": lambda a, b: a is not None and b is not None and a < b,
    "<=": lambda a, b: a is not None and b is not None and a <= b,
}


class SalesforceStandIn(StandInServer):
    """Salesforce-style OAuth + SOQL query API on loopback (see module docstring)."""

    name = "salesforce"

    def __init__(
        self,
        records: list[dict[str, Any]],
        *,
        object_name: str = "Contact",
        client_id: str = "sf-client",
        client_secret: str = "sf-secret",
        refresh_tokens: tuple[str, ...] = (),
        rotate_refresh_tokens: bool = False,
        daily_limit: int = DEFAULT_DAILY_LIMIT,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.object_name = object_name
        self.client_id = client_id
        self.client_secret = client_secret
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.daily_limit = daily_limit
        self.api_usage = 0
        self.token_requests = 0
        self._lock = threading.RLock()
        self._records = {str(r["Id"]): copy.deepcopy(r) for r in records}
        self._sessions: set[str] = set()
        self._refresh_tokens = set(refresh_tokens)
        self._cursors: dict[str, list[dict[str, Any]]] = {}
        self._batches: dict[str, int] = {}
        self._faults: deque[tuple[int, bytes | None]] = deque()
        self._token_faults: deque[int] = deque()

    # -- test controls ----------------------------------------------------------------------
    def expire_tokens(self) -> None:
        """End every session issued so far (the next API call gets 401 INVALID_SESSION_ID)."""
        with self._lock:
            self._sessions.clear()

    def fail_next(self, count: int, *, status: int, body: bytes | None = None) -> None:
        """Make the next ``count`` API calls (not token calls) fail with ``status``."""
        with self._lock:
            self._faults.extend((status, body) for _ in range(count))

    def fail_token_next(self, count: int, *, status: int) -> None:
        """Make the next ``count`` token requests fail with ``status`` (e.g. 503)."""
        with self._lock:
            self._token_faults.extend(status for _ in range(count))

    def upsert(self, record: dict[str, Any]) -> None:
        """Add or replace a record, stamping ``SystemModstamp`` with now (ms, UTC)."""
        with self._lock:
            stored = copy.deepcopy(record)
            stored["SystemModstamp"] = sf_datetime(datetime.now(UTC))
            self._records[str(stored["Id"])] = stored

    @property
    def valid_refresh_tokens(self) -> set[str]:
        with self._lock:
            return set(self._refresh_tokens)

    # -- HTTP -------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        if request.path == TOKEN_PATH:
            return self._token(request)
        match = _QUERY_PATH.match(request.path)
        with self._lock:
            if self._faults:
                status, body = self._faults.popleft()
                if body is not None:
                    return Response(status, body, "application/json")
                return sf_error(status, "SERVER_UNAVAILABLE", f"Injected failure {status}")
            if self.api_usage >= self.daily_limit:
                return sf_error(
                    HTTPStatus.FORBIDDEN,
                    "REQUEST_LIMIT_EXCEEDED",
                    f"TotalRequests Limit exceeded. ({self.api_usage}/{self.daily_limit})",
                )
            self.api_usage += 1
            usage = {"Sforce-Limit-Info": f"api-usage={self.api_usage}/{self.daily_limit}"}
        scheme, _, token = (request.header("authorization") or "").partition(" ")
        with self._lock:
            valid = scheme.lower() == "bearer" and token.strip() in self._sessions
        if not valid:
            return self._with(
                sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid"), usage
            )
        if match is None or request.method != "GET":
            return self._with(
                sf_error(
                    404, "NOT_FOUND", f"The requested resource does not exist: {request.path}"
                ),
                usage,
            )
        try:
            if match.group("locator"):
                reply = self._more(match.group("version"), match.group("locator"))
            else:
                reply = self._query(request, match.group("version"))
        except SoqlError as exc:
            reply = sf_error(HTTPStatus.BAD_REQUEST, "MALFORMED_QUERY", str(exc))
        return self._with(reply, usage)

    @staticmethod
    def _with(response: Response, headers: dict[str, str]) -> Response:
        return Response(
            response.status, response.body, response.content_type, {**response.headers, **headers}
        )

    # -- token endpoint ---------------------------------------------------------------------
    def _token(self, request: Request) -> Response:
        with self._lock:
            self.token_requests += 1
            if self._token_faults:
                status = self._token_faults.popleft()
                return json_response(
                    status, {"error": "temporarily_unavailable", "error_description": "retry"}
                )
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        client_id, secret = form.get("client_id", ""), form.get("client_secret")
        scheme, _, encoded = (request.header("authorization") or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ":"
            raw_id, _, raw_secret = decoded.partition(":")
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        grant = form.get("grant_type", "")
        if client_id != self.client_id or (secret is not None and secret != self.client_secret):
            return json_response(
                400,
                {"error": "invalid_client_id", "error_description": "client identifier invalid"},
            )
        reply: dict[str, Any] = {}
        with self._lock:
            if grant == "client_credentials":
                if secret is None:
                    return json_response(
                        400, {"error": "invalid_client", "error_description": "secret required"}
                    )
            elif grant == "refresh_token":
                presented = form.get("refresh_token", "")
                if presented not in self._refresh_tokens:
                    return json_response(
                        400,
                        {
                            "error": "invalid_grant",
                            "error_description": "expired access/refresh token",
                        },
                    )
                if self.rotate_refresh_tokens:
                    self._refresh_tokens.discard(presented)
                    rotated = f"sf-refresh-{secrets.token_urlsafe(12)}"
                    self._refresh_tokens.add(rotated)
                    reply["refresh_token"] = rotated
            else:
                return json_response(
                    400,
                    {
                        "error": "unsupported_grant_type",
                        "error_description": f"grant type {grant!r} not supported",
                    },
                )
            session = f"00D-sandbox!{secrets.token_urlsafe(24)}"
            self._sessions.add(session)
        reply.update(
            access_token=session,
            instance_url=self.url,
            id=f"{self.url}/id/00Dsandbox/005sandbox",
            token_type="Bearer",
            issued_at=str(int(time.time() * 1000)),
            signature=base64.b64encode(secrets.token_bytes(32)).decode(),
            scope="api",
        )
        return json_response(HTTPStatus.OK, reply)

    # -- query ------------------------------------------------------------------------------
    def _query(self, request: Request, version: str) -> Response:
        soql = request.query_value("q")
        if not soql:
            raise SoqlError("missing required query parameter q")
        match = _SOQL.match(soql)
        if match is None:
            raise SoqlError(f"unexpected token in query: {soql[:80]!r}")
        if match.group("object") != self.object_name:
            raise SoqlError(f"sObject type '{match.group('object')}' is not supported.")
        fields = [f.strip() for f in match.group("fields").split(",") if f.strip()]
        conditions = []
        for part in re.split(r"\s+AND\s+", match.group("where") or "", flags=re.IGNORECASE):
            if not part.strip():
                continue
            cond = _CONDITION.match(part)
            if cond is None:
                raise SoqlError(f"unexpected token in WHERE: {part!r}")
            conditions.append(
                (cond.group("field"), cond.group("op"), _literal(cond.group("value")))
            )
        batch = self._batch_size(request)
        with self._lock:
            rows = [
                r
                for r in self._records.values()
                if all(
                    _OPS[op](_comparable(r.get(field), value), value)
                    for field, op, value in conditions
                )
            ]
            order = match.group("order")
            if order:
                present = [r for r in rows if r.get(order) is not None]
                missing = [r for r in rows if r.get(order) is None]
                present.sort(
                    key=lambda r: (_sort_value(r[order]), str(r["Id"])),
                    reverse=(match.group("direction") or "ASC").upper() == "DESC",
                )
                rows = present + missing
            rendered = [self._render(r, fields, version) for r in rows]
            locator = f"01gSANDBOX{secrets.token_hex(6)}"
            self._cursors[locator] = rendered
            self._batches[locator] = batch
        return self._page(version, locator, 0, batch)

    def _more(self, version: str, locator_offset: str) -> Response:
        locator, _, offset = locator_offset.rpartition("-")
        with self._lock:
            batch = self._batches.get(locator)
        if batch is None or not offset.isdigit():
            return sf_error(404, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._page(version, locator, int(offset), batch)

    def _page(self, version: str, locator: str, offset: int, batch: int) -> Response:
        with self._lock:
            rows = self._cursors[locator]
        chunk = rows[offset : offset + batch]
        done = offset + len(chunk) >= len(rows)
        body: dict[str, Any] = {"totalSize": len(rows), "done": done, "records": chunk}
        if not done:
            body["nextRecordsUrl"] = f"/services/data/{version}/query/{locator}-{offset + batch}"
        return json_response(HTTPStatus.OK, body)

    @staticmethod
    def _batch_size(request: Request) -> int:
        options = request.header("sforce-query-options") or ""
        match = re.search(r"batchSize\s*=\s*(\d+)", options)
        if match is None:
            return DEFAULT_BATCH
        # Salesforce treats batchSize as a hint within [200, 2000].
        return max(MIN_BATCH, min(MAX_BATCH, int(match.group(1))))

    def _render(self, record: dict[str, Any], fields: list[str], version: str) -> dict[str, Any]:
        missing = [f for f in fields if f not in record and f != "Id"]
        if missing:
            raise SoqlError(f"No such column '{missing[0]}' on entity '{self.object_name}'.")
        rendered: dict[str, Any] = {
            "attributes": {
                "type": self.object_name,
                "url": f"/services/data/{version}/sobjects/{self.object_name}/{record['Id']}",
            }
        }
        rendered.update({f: copy.deepcopy(record.get(f)) for f in fields})
        return rendered


def _sort_value(value: Any) -> Any:
    """Datetime-looking text sorts as a time; anything else as itself."""
    if isinstance(value, str) and re.match(r"^\d{4}-\d{2}-\d{2}T", value):
        return _parse_time(value)
    return value
