"""Check HTTP requests and responses against a vendor's OpenAPI document (contract tests).

A stand-in and the adapter that talks to it are written by the same hands, so they can drift
away from the vendor *together* and every adapter test still passes. Contract tests close that
gap: every request an adapter sends and every response a stand-in returns is checked against
the vendor's own OpenAPI file (kept, trimmed, in ``tests/contract/specs/``).

The checker is generic: it knows nothing about any vendor. It wraps ``openapi-core`` and adds
the three checks that library leaves out:

* **unknown query parameters** are a violation (``openapi-core`` ignores them);
* **required header parameters must really be sent**: ``openapi-core`` fills in a missing
  header from its schema ``default`` and calls the request valid (Klaviyo's ``revision``);
* **a body where the operation declares none** (a GET with a body, a 204 with content).

Usage::

    from tests.contract.openapi_check import ContractChecker, HttpExchange, load_spec

    checker = ContractChecker(load_spec("klaviyo_2026-07-15.audience_sync.json"))
    exchange = HttpExchange(
        method="POST",
        path="/api/lists/Y6nRLr/relationships/profiles",
        query={},                                   # name -> list of values, as parse_qs gives
        request_headers={"Authorization": "Klaviyo-API-Key pk_x", "revision": "2026-07-15"},
        request_body=b'{"data": [{"type": "profile", "id": "01H"}]}',
        request_content_type="application/vnd.api+json",
        status=204,
        response_headers={},
        response_body=b"",
        response_content_type=None,
    )
    checker.check_request(exchange)     # raises ContractViolation naming the operation
    checker.check_response(exchange)
    checker.check(exchange)             # both
    problems = checker.problems(exchange)   # the same checks, as a list of strings

Notes:

* The spec's ``servers`` are replaced by one fixed loopback-style URL, so requests recorded at
  a stand-in on any port match; paths are matched exactly as the spec writes them (Mailchimp's
  carry ``/3.0``).
* JSON-flavoured media types (``application/vnd.api+json``, ``application/problem+json`` and
  ``*/*``, which HubSpot uses for errors) are deserialised as JSON; pass
  ``extra_deserializers`` for others.
* A response's status is matched as the spec allows: exact code, then ``4XX``/``5XX``, then
  ``default``.
* Known defects of a vendor file are *not* hidden here. A test that must live with one (a
  field the vendor mistyped) fixes a copy of the spec dict before building the checker and
  says why, so every relaxation is visible in the test that needs it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openapi_core import Config, OpenAPI
from openapi_core.templating.paths.exceptions import PathError
from openapi_core.testing import MockRequest, MockResponse

SPECS_DIR = Path(__file__).parent / "specs"
CHECK_HOST = "http://contract.test"
"""The host every recorded exchange is checked against (the spec's servers are replaced)."""
JSON_MEDIA_TYPES = ("application/vnd.api+json", "application/problem+json", "*/*")
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


class ContractViolation(AssertionError):
    """A request or response does not match the vendor's OpenAPI document."""


@dataclass(frozen=True)
class HttpExchange:
    """One request and the response it got, as plain values (bytes bodies, str headers)."""

    method: str
    path: str
    query: Mapping[str, Sequence[str]] = field(default_factory=dict)
    request_headers: Mapping[str, str] = field(default_factory=dict)
    request_body: bytes = b""
    request_content_type: str | None = None
    status: int = 200
    response_headers: Mapping[str, str] = field(default_factory=dict)
    response_body: bytes = b""
    response_content_type: str | None = None

    @property
    def label(self) -> str:
        return f"{self.method.upper()} {self.path} -> {self.status}"


def load_spec(name: str | Path) -> dict[str, Any]:
    """A spec as a dict: ``name`` inside ``tests/contract/specs/``, or a path to a file."""
    path = Path(name)
    if not path.is_absolute() and not path.exists():
        path = SPECS_DIR / path
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _template_matches(template: str, path: str) -> bool:
    """Whether ``path`` fits ``template`` (``{name}`` matches one non-empty segment)."""
    want = template.strip("/").split("/")
    have = path.strip("/").split("/")
    if len(want) != len(have):
        return False
    return all(
        (w.startswith("{") and w.endswith("}") and h != "") or w == h
        for w, h in zip(want, have, strict=True)
    )


class ContractChecker:
    """Validates :class:`HttpExchange` values against one OpenAPI document (3.0 or 3.1)."""

    def __init__(
        self,
        spec: Mapping[str, Any],
        *,
        extra_deserializers: Mapping[str, Callable[[bytes], Any]] | None = None,
    ) -> None:
        self.spec: dict[str, Any] = copy.deepcopy(dict(spec))
        self.spec["servers"] = [{"url": CHECK_HOST}]
        deserializers: dict[str, Callable[[bytes], Any]] = dict.fromkeys(
            JSON_MEDIA_TYPES, json.loads
        )
        deserializers.update(extra_deserializers or {})
        self._api = OpenAPI.from_dict(
            self.spec, config=Config(extra_media_type_deserializers=deserializers)
        )

    # -- lookup -------------------------------------------------------------------------------
    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        """``(path template, operation object)`` for a concrete request path.

        Literal templates win over templated ones (``/lists/search`` before ``/lists/{id}``).
        """
        verb = method.lower()
        candidates = [
            (template, item)
            for template, item in self.spec.get("paths", {}).items()
            if verb in item and _template_matches(template, path)
        ]
        if not candidates:
            raise ContractViolation(f"{method.upper()} {path}: no such operation in the spec")
        candidates.sort(key=lambda pair: pair[0].count("{"))
        template, item = candidates[0]
        return template, item[verb]

    def _parameters(self, method: str, path: str) -> list[dict[str, Any]]:
        template, operation = self.operation(method, path)
        declared = [
            *self.spec["paths"][template].get("parameters", []),
            *operation.get("parameters", []),
        ]
        return [self._resolve(p) for p in declared]

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        """Follow a local ``$ref`` (``#/components/...``) once or more."""
        seen = 0
        while "$ref" in node and seen < 20:
            target: Any = self.spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
            seen += 1
        return node

    # -- checks -------------------------------------------------------------------------------
    def request_problems(self, exchange: HttpExchange) -> list[str]:
        """Every way the request breaks the contract (empty when it keeps it)."""
        try:
            parameters = self._parameters(exchange.method, exchange.path)
        except ContractViolation as exc:
            return [str(exc)]
        problems: list[str] = []
        query_names = {p["name"] for p in parameters if p.get("in") == "query"}
        problems.extend(
            f"query parameter {name!r} is not declared by the operation"
            for name in exchange.query
            if name not in query_names
        )
        sent_headers = {name.lower() for name in exchange.request_headers}
        problems.extend(
            f"required header {p['name']!r} was not sent (the spec's default would hide this)"
            for p in parameters
            if p.get("in") == "header"
            and p.get("required")
            and p["name"].lower() not in sent_headers
        )
        _, operation = self.operation(exchange.method, exchange.path)
        if "requestBody" not in operation and exchange.request_body:
            problems.append("the operation takes no request body, but one was sent")
        try:
            self._api.validate_request(self._mock_request(exchange))
        except Exception as exc:  # openapi-core raises a family of unrelated error types
            problems.append(_describe(exc))
        return problems

    def response_problems(self, exchange: HttpExchange) -> list[str]:
        """Every way the response breaks the contract (empty when it keeps it)."""
        try:
            _, operation = self.operation(exchange.method, exchange.path)
        except ContractViolation as exc:
            return [str(exc)]
        problems: list[str] = []
        declared = self._declared_response(operation, exchange.status)
        if declared is None:
            return [
                f"status {exchange.status} is not declared (nor {str(exchange.status)[0]}XX "
                "nor default)"
            ]
        if "content" not in declared and exchange.response_body:
            problems.append(f"status {exchange.status} declares no body, but one was returned")
        if "content" in declared or exchange.response_body:
            try:
                self._api.validate_response(
                    self._mock_request(exchange), self._mock_response(exchange)
                )
            except Exception as exc:  # as above
                problems.append(_describe(exc))
        return problems

    def problems(self, exchange: HttpExchange) -> list[str]:
        """Request and response problems, each prefixed with what it is about."""
        return [f"request: {p}" for p in self.request_problems(exchange)] + [
            f"response: {p}" for p in self.response_problems(exchange)
        ]

    def check_request(self, exchange: HttpExchange) -> None:
        """Raise :class:`ContractViolation` unless the request keeps the contract."""
        self._raise(exchange, [f"request: {p}" for p in self.request_problems(exchange)])

    def check_response(self, exchange: HttpExchange) -> None:
        """Raise :class:`ContractViolation` unless the response keeps the contract."""
        self._raise(exchange, [f"response: {p}" for p in self.response_problems(exchange)])

    def check(self, exchange: HttpExchange) -> None:
        """Raise :class:`ContractViolation` unless both request and response keep it."""
        self._raise(exchange, self.problems(exchange))

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _raise(exchange: HttpExchange, problems: list[str]) -> None:
        if problems:
            raise ContractViolation(f"{exchange.label}: " + "; ".join(problems))

    def _declared_response(self, operation: dict[str, Any], status: int) -> dict[str, Any] | None:
        responses = operation.get("responses", {})
        for key in (str(status), f"{str(status)[0]}XX", "default"):
            if key in responses:
                return self._resolve(responses[key])
        return None

    @staticmethod
    def _mock_request(exchange: HttpExchange) -> MockRequest:
        return MockRequest(
            CHECK_HOST,
            exchange.method.lower(),
            exchange.path,
            args={name: list(values) for name, values in exchange.query.items()},
            headers=dict(exchange.request_headers),
            data=exchange.request_body or None,
            content_type=_media_type(exchange.request_content_type) or "application/json",
        )

    @staticmethod
    def _mock_response(exchange: HttpExchange) -> MockResponse:
        return MockResponse(
            exchange.response_body,
            status_code=exchange.status,
            headers=dict(exchange.response_headers),
            content_type=_media_type(exchange.response_content_type) or "application/json",
        )


def _describe(exc: BaseException) -> str:
    """A one-line account of an openapi-core error, with its schema errors when it has them."""
    parts = [f"{type(exc).__name__}: {exc}"]
    seen: BaseException | None = exc.__cause__ or exc.__context__
    for _ in range(5):
        if seen is None:
            break
        parts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    for error in getattr(exc, "schema_errors", None) or []:
        parts.append(str(getattr(error, "message", error)))
    if isinstance(exc, PathError):
        parts.append("(path not matched)")
    return " | ".join(parts)
