"""The CRM stand-in class: building it from a contacts file, dispatching requests and
routing them to the token endpoint or the contacts API.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from pathlib import Path
from typing import Any

from infra.sandbox._http import Request, Response
from infra.sandbox.crm.contacts import ContactReads
from infra.sandbox.crm.faults import FaultsAndLimits
from infra.sandbox.crm.tokens import TokenEndpoint
from infra.sandbox.crm.wire import (
    CONTACTS_PATH,
    SEARCH_PATH,
    TOKEN_PATH,
    CrmRequestError,
    hubspot_error,
)


class CrmStandIn(ContactReads, TokenEndpoint, FaultsAndLimits):
    """HubSpot-style CRM contacts API served on loopback (see module docstring for routes).

    ``contacts`` are HubSpot contact objects (``{"id", "properties", "createdAt",
    "updatedAt", "archived"}``), e.g. ``crm_contacts.json`` from :mod:`infra.sandbox.generate`.
    The store is copied and guarded by a lock, so tests may mutate it while clients page.
    """

    name = "crm"

    @classmethod
    def from_file(cls, path: Path | str, **kwargs: Any) -> CrmStandIn:
        """Build a stand-in from a JSON file holding a list of contact objects."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read CRM contacts from {path}: {exc}") from exc
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a JSON list of contacts, found {type(data)}")
        return cls(data, **kwargs)

    # -- HTTP -------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        """Route one request (token endpoint, then faults, rate limit, auth, API)."""
        if request.path == TOKEN_PATH:
            return self._token(request)
        for check in (self._take_fault, self._rate_limit, self._authenticate):
            rejection = check(request)
            if rejection is not None:
                return rejection
        try:
            return self._route(request)
        except CrmRequestError as exc:
            return hubspot_error(exc.status, exc.category, exc.message)

    def _route(self, request: Request) -> Response:
        path = request.path.rstrip("/")
        if path == SEARCH_PATH:
            self._require_method(request, "POST")
            return self._search(request)
        if path == CONTACTS_PATH:
            self._require_method(request, "GET")
            return self._list(request)
        if path.startswith(CONTACTS_PATH + "/") and path.count("/") == 5:
            self._require_method(request, "GET")
            return self._get_one(request, path.rsplit("/", 1)[1])
        raise CrmRequestError(
            HTTPStatus.NOT_FOUND, "OBJECT_NOT_FOUND", f"No CRM stand-in route for {path!r}"
        )

    @staticmethod
    def _require_method(request: Request, method: str) -> None:
        if request.method != method:
            raise CrmRequestError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                "VALIDATION_ERROR",
                f"{request.method} is not allowed on {request.path}; use {method}",
            )
