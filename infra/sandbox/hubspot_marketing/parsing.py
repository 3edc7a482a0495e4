"""Route matching and request validation (query parameters, JSON bodies, batch sizes)
and the batch answer shape shared by the HubSpot routes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from infra.sandbox._http import Request, Response, json_response
from infra.sandbox.hubspot_marketing.routes import REQUIRED_QUERY, ROUTES, _Route
from infra.sandbox.hubspot_marketing.schemas import schema_problem
from infra.sandbox.hubspot_marketing.state import HubSpotMarketingState
from infra.sandbox.hubspot_marketing.wire import (
    BATCH_MAX_INPUTS,
    HubSpotApiError,
    _not_found,
    _validation,
    iso_now,
)


class HubSpotParsing(HubSpotMarketingState):
    """Route matching, body checks and batch answers."""

    @staticmethod
    def _find_route(request: Request) -> tuple[_Route, re.Match[str]]:
        allowed: list[str] = []
        for route in ROUTES:
            match = route.pattern.match(request.path)
            if match is None:
                continue
            if route.method == request.method:
                return route, match
            allowed.append(route.method)
        if allowed:
            raise HubSpotApiError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                "VALIDATION_ERROR",
                f"{request.method} is not allowed on {request.path}; use {' or '.join(allowed)}",
            )
        raise _not_found(f"No HubSpot destination stand-in route for {request.path!r}")

    @staticmethod
    def _check_query(request: Request, route: _Route) -> None:
        for name, values in request.query.items():
            check = route.query.get(name)
            if check is None:
                raise _validation(
                    f"Unknown query parameter {name!r} for {route.method} {request.path}; "
                    f"allowed: {sorted(route.query)}",
                    parameter=[name],
                )
            if len(values) != 1 or not check(values[0]):
                raise _validation(f"Invalid value for query parameter {name!r}: {values}")
        for name in REQUIRED_QUERY.get(route.handler, ()):
            if name not in request.query:
                raise _validation(f"Missing required query parameter {name!r}")

    @staticmethod
    def _json(request: Request, schema: Mapping[str, Any]) -> Any:
        try:
            body = json.loads(request.body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _validation(f"Invalid input JSON on line 1: {exc}") from exc
        problem = schema_problem(body, schema)
        if problem is not None:
            raise _validation(f"Invalid input JSON: {problem}")
        return body

    @staticmethod
    def _check_batch_size(inputs: list[Any]) -> None:
        if len(inputs) > BATCH_MAX_INPUTS:
            raise _validation(
                f"Batch input limit exceeded: got {len(inputs)} inputs, the maximum is "
                f"{BATCH_MAX_INPUTS}."
            )

    def _shuffled(self, items: list[Any]) -> list[Any]:
        """Batch results in an order other than the inputs' (HubSpot promises no order)."""
        shuffled = list(items)
        if len(shuffled) > 1:
            self._random.shuffle(shuffled)
            if shuffled == items:
                shuffled.reverse()
        return shuffled

    @staticmethod
    def _batch_body(results: list[Any], errors: list[dict[str, Any]], started: str) -> Response:
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "requestedAt": started,
            "startedAt": started,
            "completedAt": iso_now(),
        }
        if errors:
            body["numErrors"] = len(errors)
            body["errors"] = errors
            return json_response(HTTPStatus.MULTI_STATUS, body)
        return json_response(HTTPStatus.OK, body)
