"""The Klaviyo stand-in class: routing, authentication, the revision header, and the test
helpers that simulate people acting on their profiles.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from infra.sandbox._http import Request, Response
from infra.sandbox.klaviyo.consent import ConsentJobs
from infra.sandbox.klaviyo.erasure import DeletionJobs
from infra.sandbox.klaviyo.imports import ImportJobs
from infra.sandbox.klaviyo.limits import FaultsAndLimits
from infra.sandbox.klaviyo.lists import ListRoutes
from infra.sandbox.klaviyo.profiles import ProfileReads
from infra.sandbox.klaviyo.records import RecordedExchange
from infra.sandbox.klaviyo.wire import KNOWN_REVISIONS, KlaviyoError, _invalid, _not_found, _now


class KlaviyoStandIn(
    ImportJobs, ProfileReads, ListRoutes, ConsentJobs, DeletionJobs, FaultsAndLimits
):
    """Klaviyo's audience-sync operations, strict about the wire contract.

    ``polls_to_finish``: how many reads of an import job it takes to finish (the first read
    shows ``processing``). ``rate_limits`` overrides :data:`RATE_LIMITS` per operation class
    (``import``, ``subscriptions``, ``reads``, ``list_writes``, ``deletion``). ``time_scale``
    runs the rate windows that many times faster than the wall clock (a 1-second burst window
    lasts ``1 / time_scale`` s; ``Retry-After`` still counts real seconds), so a benchmark can
    meet the documented limits without waiting for real minutes.
    """

    name = "klaviyo"

    def profile(self, email: str) -> dict[str, Any] | None:
        """The profile with ``email`` in wire shape (subscriptions included), or ``None``."""
        with self._lock:
            self.settle()
            found = self._by_email(email)
            return None if found is None else found.to_wire("", with_subscriptions=True)

    def list_members(self, list_id: str) -> set[str]:
        """Emails of the members of ``list_id``."""
        with self._lock:
            self.settle()
            members = self._list(list_id).members
            return {self._profiles[pid].email or pid for pid in members if pid in self._profiles}

    def person_unsubscribes(self, email: str) -> None:
        """Simulate the person clicking "unsubscribe" in a Klaviyo email."""
        self._suppress_person(email, "UNSUBSCRIBE")

    def person_bounces(self, email: str) -> None:
        """Simulate a hard bounce."""
        self._suppress_person(email, "HARD_BOUNCE")

    def person_complains(self, email: str) -> None:
        """Simulate a spam complaint."""
        self._suppress_person(email, "SPAM_COMPLAINT")

    def person_leaves_list(self, email: str, list_id: str) -> None:
        """Simulate an unsubscribe from one list only (a list suppression)."""
        with self._lock:
            self.settle()
            found = self._by_email(email)
            if found is None:
                raise KeyError(f"no Klaviyo profile with email {email!r}")
            self._list(list_id).members.pop(found.id, None)
            found.list_suppressions.append((list_id, "UNSUBSCRIBE", _now()))
            found.touch()

    def _suppress_person(self, email: str, reason: str) -> None:
        with self._lock:
            self.settle()
            found = self._by_email(email)
            if found is None:
                raise KeyError(f"no Klaviyo profile with email {email!r}")
            if reason == "UNSUBSCRIBE":
                found.consent, found.consent_timestamp = "UNSUBSCRIBED", _now()
            found.suppress(reason)

    # -- request plumbing ------------------------------------------------------------------------
    def dispatch(self, request: Request) -> Response:
        response = super().dispatch(request)
        with self._lock:
            self.exchanges.append(RecordedExchange(request, response))
        return response

    def handle(self, request: Request) -> Response:
        with self._lock:
            self.settle()
        try:
            self._take_fault()
            self._authenticate(request)
            self._check_revision(request)
            route, handler = self._route(request)
            headers = self._admit(route)
            response = handler(request)
        except KlaviyoError as exc:
            return exc.response()
        response.headers.update(headers)
        return response

    def _authenticate(self, request: Request) -> None:
        header = request.header("authorization") or ""
        scheme, _, key = header.partition(" ")
        if scheme != "Klaviyo-API-Key" or not key.strip():
            raise KlaviyoError(
                HTTPStatus.UNAUTHORIZED,
                "not_authenticated",
                "Authentication credentials were not provided.",
                "Missing or invalid Authorization header: send 'Klaviyo-API-Key <private key>'.",
            )
        if not secrets.compare_digest(key.strip(), self.api_key):
            raise KlaviyoError(
                HTTPStatus.UNAUTHORIZED,
                "authentication_failed",
                "Incorrect authentication credentials.",
                "Incorrect authentication credentials.",
            )

    @staticmethod
    def _check_revision(request: Request) -> None:
        revision = request.header("revision")
        if revision is None:
            raise _invalid(
                "The 'revision' header is required (format YYYY-MM-DD).", parameter="revision"
            )
        if revision.split(".", 1)[0] not in KNOWN_REVISIONS:
            raise _invalid(f"Invalid revision {revision!r}.", parameter="revision")

    def _route(self, request: Request) -> tuple[str, Callable[[Request], Response]]:
        path = request.path.rstrip("/")
        parts = path.split("/")[1:]
        if parts[:1] != ["api"] or len(parts) < 2:
            raise _not_found(f"No route for {request.method} {request.path}.")
        routes: dict[tuple[str, ...], tuple[str, dict[str, Callable[[Request], Response]]]] = {
            ("profile-bulk-import-jobs",): ("import", {"POST": self._create_import}),
            ("profile-subscription-bulk-create-jobs",): (
                "subscriptions",
                {"POST": self._subscribe},
            ),
            ("profile-subscription-bulk-delete-jobs",): (
                "subscriptions",
                {"POST": self._unsubscribe},
            ),
            ("profile-suppression-bulk-create-jobs",): ("subscriptions", {"POST": self._suppress}),
            ("profiles",): ("reads", {"GET": self._get_profiles}),
            ("lists",): ("reads", {"GET": self._get_lists}),
            ("data-privacy-deletion-jobs",): ("deletion", {"POST": self._delete_profile}),
        }
        rest = tuple(parts[1:])
        if rest in routes:
            route, methods = routes[rest]
        elif len(rest) == 2 and rest[0] == "profile-bulk-import-jobs":
            route, methods = "import", {"GET": lambda r: self._get_import(r, rest[1])}
        elif (
            len(rest) == 3 and rest[0] == "profile-bulk-import-jobs" and rest[2] == "import-errors"
        ):
            route, methods = "import", {"GET": lambda r: self._import_errors(r, rest[1])}
        elif len(rest) == 4 and rest[0] == "lists" and rest[2:] == ("relationships", "profiles"):
            list_id = rest[1]
            route = "reads" if request.method == "GET" else "list_writes"
            methods = {
                "GET": lambda r: self._get_members(r, list_id),
                "POST": lambda r: self._change_members(r, list_id, add=True),
                "DELETE": lambda r: self._change_members(r, list_id, add=False),
            }
        else:
            raise _not_found(f"No route for {request.method} {request.path}.")
        handler = methods.get(request.method)
        if handler is None:
            raise KlaviyoError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed.",
                f'Method "{request.method}" not allowed.',
            )
        return route, handler
