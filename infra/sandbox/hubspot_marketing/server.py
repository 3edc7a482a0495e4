"""The HubSpot marketing stand-in class: dispatch, in-flight accounting, authentication,
and the test helpers that read the portal or simulate people.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from http import HTTPStatus

from infra.sandbox._http import Request, Response
from infra.sandbox.hubspot_marketing.contacts import ContactRoutes
from infra.sandbox.hubspot_marketing.limits import FaultsAndLimits
from infra.sandbox.hubspot_marketing.lists import ListRoutes
from infra.sandbox.hubspot_marketing.preferences import PreferenceRoutes
from infra.sandbox.hubspot_marketing.records import Exchange
from infra.sandbox.hubspot_marketing.wire import HubSpotApiError, hubspot_error


class HubSpotMarketingStandIn(ContactRoutes, ListRoutes, PreferenceRoutes, FaultsAndLimits):
    """HubSpot contacts, properties, lists and subscription preferences served on loopback.

    ``lists`` pre-creates ``MANUAL`` lists by id (numeric strings, as HubSpot's are);
    ``subscription_ids`` names the email subscription types of the portal. ``shuffle_seed``
    fixes the order in which batch results are returned (always not the input order when a
    batch has more than one input). ``exchanges`` records every request and answer (turn it off
    with ``record_exchanges=False`` for long runs). ``response_delay`` (seconds) keeps every
    admitted request in flight that long, as the real API's latency does.
    """

    name = "hubspot-marketing"

    def contact(self, email: str) -> dict[str, str] | None:
        """The stored properties of the contact with ``email``, or ``None``."""
        with self._lock:
            contact_id = self._by_email.get(email.strip().lower())
            return dict(self._contacts[contact_id].properties) if contact_id else None

    def list_members(self, list_id: str) -> set[str]:
        """Emails of the contacts in list ``list_id``."""
        with self._lock:
            members = self._list(list_id).members
            return {self._contacts[i].properties["email"] for i in members if i in self._contacts}

    def subscription_status(self, email: str, subscription_id: int) -> str:
        with self._lock:
            status = self._statuses.get(email.strip().lower(), {}).get(subscription_id)
            return status.state if status else "NOT_SPECIFIED"

    def is_blocklisted(self, email: str) -> bool:
        with self._lock:
            return email.strip().lower() in self._blocklist

    def person_unsubscribes(self, email: str, subscription_id: int | None = None) -> None:
        """Simulate the person clicking "unsubscribe" in a HubSpot email (``None``: from all)."""
        with self._lock:
            key = email.strip().lower()
            if subscription_id is None:
                self._opt_out_of_all(key, source="Unsubscribe link")
            else:
                self._set_status(key, subscription_id, "UNSUBSCRIBED", "Unsubscribe link", None)

    def requests_to(self, method: str, path_suffix: str) -> list[Exchange]:
        """Recorded exchanges whose method matches and whose path ends with ``path_suffix``."""
        with self._lock:
            return [
                e for e in self.exchanges if e.method == method and e.path.endswith(path_suffix)
            ]

    # -- HTTP -----------------------------------------------------------------------------------
    def dispatch(self, request: Request) -> Response:
        response = super().dispatch(request)
        if not self.record_exchanges:
            return response
        with self._lock:
            self.exchanges.append(
                Exchange(
                    request.method,
                    request.path,
                    request.query,
                    request.headers,
                    request.body,
                    response.status,
                    dict(response.headers),
                    response.body,
                    response.content_type,
                )
            )
        return response

    def handle(self, request: Request) -> Response:
        """Faults, rate limit, auth, then routing; every answer carries the rate headers.

        ``max_in_flight`` records the most requests handled at once (HubSpot caps none).
        """
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            return self._handle_counted(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _handle_counted(self, request: Request) -> Response:
        fault = self._take_fault()
        if fault is not None:
            return fault
        limited = self._admit()
        if limited is not None:
            return limited
        if self.response_delay > 0:
            time.sleep(self.response_delay)
        rejection = self._authenticate(request)
        response = rejection if rejection is not None else self._route(request)
        response.headers.update(self._rate_headers())
        return response

    def _route(self, request: Request) -> Response:
        try:
            route, match = self._find_route(request)
            self._check_query(request, route)
            handler: Callable[[Request, re.Match[str]], Response] = getattr(self, route.handler)
            return handler(request, match)
        except HubSpotApiError as exc:
            return hubspot_error(exc.status, exc.category, exc.message, exc.context)

    def _authenticate(self, request: Request) -> Response | None:
        scheme, _, token = (request.header("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return hubspot_error(
                HTTPStatus.UNAUTHORIZED,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. Send 'Authorization: Bearer <private app "
                "access token>'.",
            )
        if not secrets.compare_digest(token.strip(), self.token):
            return hubspot_error(
                HTTPStatus.UNAUTHORIZED,
                "INVALID_AUTHENTICATION",
                "The private app access token used to make this call is not valid.",
            )
        return None
