"""The Mailchimp stand-in class: the simultaneous-connection ceiling, authentication,
routing, and the test helpers that read audiences or simulate people.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections import Counter
from http import HTTPStatus
from typing import Any

from infra.sandbox._http import Request, Response, json_response
from infra.sandbox.mailchimp.faults import Faults
from infra.sandbox.mailchimp.members import MemberRoutes
from infra.sandbox.mailchimp.parsing import _allowed_query, _check_query
from infra.sandbox.mailchimp.wire import (
    _MEMBER_PATH,
    ABUSE_REASON,
    BASE_PATH,
    MailchimpError,
    MemberError,
    _not_found,
    problem,
    subscriber_hash,
)


class MailchimpStandIn(MemberRoutes, Faults):
    """Mailchimp Marketing v3 list-members API served on loopback.

    ``response_delay`` (seconds) is the least time each request stays in flight (the platform's
    time per call, the stand-in's own work included), which makes the ``max_connections`` limit
    easy to exercise from tests and lets a benchmark give each batch call a realistic duration.
    ``clock`` stamps ``last_changed`` (Mailchimp's resolution: whole seconds).
    ``on_members_page(list_id, offset)``, when set, runs after each ``GET …/members`` page is
    built and before it is sent: a test edits the audience there, as a marketer or a recipient
    would between two pages of a read.
    """

    name = "mailchimp"

    def merge_fields(self, list_id: str) -> dict[str, dict[str, Any]]:
        """The merge fields of ``list_id`` in wire shape, keyed by tag."""
        with self._lock:
            self._store(list_id)
            return {t: f.to_wire(list_id) for t, f in self._merge_fields[list_id].items()}

    @property
    def list_ids(self) -> list[str]:
        """Ids of all audiences, in creation order."""
        with self._lock:
            return list(self._lists)

    def members(self, list_id: str) -> dict[str, dict[str, Any]]:
        """All members of ``list_id`` (archived included) in wire shape, keyed by hash."""
        with self._lock:
            store = self._store(list_id)
            return {h: m.to_wire(list_id, self._tag_ids) for h, m in store.items()}

    def member_unsubscribes(self, list_id: str, email: str, *, reason: str | None = None) -> None:
        """Simulate the person clicking "unsubscribe" in the platform."""
        with self._lock:
            member = self._existing(list_id, email)
            member.status, member.last_changed = "unsubscribed", self._stamp()
            member.unsubscribe_reason = reason

    def member_reports_spam(self, list_id: str, email: str) -> None:
        """Simulate a spam complaint: Mailchimp unsubscribes the member (abuse reason)."""
        self.member_unsubscribes(list_id, email, reason=ABUSE_REASON)

    def member_bounces(self, list_id: str, email: str) -> None:
        """Simulate a hard bounce: the address is cleaned."""
        with self._lock:
            member = self._existing(list_id, email)
            member.status, member.last_changed = "cleaned", self._stamp()

    def marketer_edits(self, list_id: str, email: str, **merge_fields: Any) -> None:
        """Simulate an edit in the Mailchimp UI: new merge values, a new ``last_changed``."""
        with self._lock:
            member = self._existing(list_id, email)
            member.merge_fields.update(merge_fields)
            member.last_changed = self._stamp()

    def member_requests(self, list_id: str) -> list[tuple[str, str | None]]:
        """Every ``(email, status)`` the batch endpoint received for ``list_id``, in order.

        Includes members the batch refused (the payload reached the platform either way), so
        tests can count how often each contact was sent.
        """
        with self._lock:
            return [(email, status) for lst, email, status in self._member_log if lst == list_id]

    def sends_per_member(self, list_id: str) -> Counter[str]:
        """How many batch payloads named each (normalised) email in ``list_id``."""
        return Counter(email for email, _ in self.member_requests(list_id))

    # -- HTTP -----------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        """Concurrency check, faults, auth, then routing; errors become problem JSON."""
        with self._lock:
            self._in_flight += 1
            in_flight = self._in_flight
            self.max_in_flight = max(self.max_in_flight, in_flight)
            self.rejected_over_ceiling += in_flight > self.max_connections
        try:
            if in_flight > self.max_connections:
                return problem(
                    HTTPStatus.TOO_MANY_REQUESTS,
                    "Too Many Requests",
                    f"You have exceeded the limit of {self.max_connections} simultaneous "
                    "connections.",
                )
            started = time.monotonic()
            response = self._handle_admitted(request)
            # The platform's time per call: the stand-in's own work counts towards it, so ten
            # concurrent calls cost one delay, not one delay plus ten turns at the store lock.
            rest = self.response_delay - (time.monotonic() - started)
            if rest > 0:
                time.sleep(rest)
            return response
        finally:
            with self._lock:
                self._in_flight -= 1

    def _handle_admitted(self, request: Request) -> Response:
        fault = self._take_fault()
        if fault is not None:
            return fault
        rejection = self._authenticate(request)
        if rejection is not None:
            return rejection
        try:
            return self._route(request)
        except MailchimpError as exc:
            return problem(exc.status, exc.title, exc.detail, errors=exc.errors)
        except MemberError as exc:
            errors = (
                [{"field": exc.field_name, "message": exc.field_message}]
                if exc.field_name
                else None
            )
            return problem(HTTPStatus.BAD_REQUEST, exc.title, exc.message, errors=errors)

    def _authenticate(self, request: Request) -> Response | None:
        header = request.header("authorization") or ""
        scheme, _, credentials = header.partition(" ")
        presented: str | None = None
        if scheme.lower() == "bearer":
            presented = credentials.strip()
        elif scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            presented = decoded.partition(":")[2]
        if not presented:
            return problem(
                HTTPStatus.UNAUTHORIZED,
                "API Key Missing",
                "Your request did not include an API key (HTTP Basic password or Bearer).",
            )
        if not secrets.compare_digest(presented, self.api_key):
            return problem(
                HTTPStatus.UNAUTHORIZED,
                "API Key Invalid",
                "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
            )
        return None

    def _route(self, request: Request) -> Response:
        if request.path.rstrip("/") == f"{BASE_PATH}/ping":
            _check_query(request, frozenset())
            return json_response(HTTPStatus.OK, {"health_status": "Everything's Chimpy!"})
        match = _MEMBER_PATH.match(request.path)
        if match is None:
            raise _not_found(f"No Mailchimp stand-in resource at {request.path!r}.")
        list_id, key, rest = match["list"], match["key"], match["rest"]
        _check_query(request, _allowed_query(request.method, match))
        with self._lock:
            self._store(list_id)  # 404 for unknown lists before anything else
        if match["merge"] is not None:
            return self._merge_fields_resource(request, list_id)
        if match["members"] is None:
            return self._list_resource(request, list_id)
        if key is None:
            return self._members_collection(request, list_id)
        member_hash = subscriber_hash(key) if "@" in key else key.lower()
        if rest == "/tags":
            self._require(request, "GET", "POST")
            if request.method == "GET":
                return self._member_tags(request, list_id, member_hash)
            return self._update_tags(list_id, member_hash, self._json(request))
        if rest == "/actions/delete-permanent":
            self._require(request, "POST")
            return self._delete_permanent(list_id, member_hash)
        return self._member_resource(request, list_id, member_hash)
