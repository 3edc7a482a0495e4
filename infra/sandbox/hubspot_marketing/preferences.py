"""Communication preferences v4: subscription definitions, statuses read and written in
batches, and opting out of all email.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from infra.sandbox._http import Request, Response, json_response
from infra.sandbox.hubspot_marketing.parsing import HubSpotParsing
from infra.sandbox.hubspot_marketing.records import _Status
from infra.sandbox.hubspot_marketing.schemas import BATCH_STRINGS_BODY, STATUS_WRITE_BODY
from infra.sandbox.hubspot_marketing.wire import _standard_error, is_valid_email, iso_now


class PreferenceRoutes(HubSpotParsing):
    """Subscription status operations."""

    # -- communication preferences v4 -----------------------------------------------------------
    def _read_definitions(self, request: Request, match: re.Match[str]) -> Response:
        started = iso_now()
        with self._lock:
            results = [
                {
                    "id": str(sid),
                    "name": f"Marketing email {sid}",
                    "description": "Marketing email",
                    "purpose": "Marketing",
                    "communicationMethod": "Email",
                    "isActive": True,
                    "isDefault": index == 0,
                    "isInternal": False,
                    "createdAt": created,
                    "updatedAt": created,
                }
                for index, (sid, created) in enumerate(self._definitions.items())
            ]
        body = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": iso_now(),
        }
        return json_response(HTTPStatus.OK, body)

    def _set_status(
        self, email: str, subscription_id: int, state: str, source: str, legal_basis: str | None
    ) -> str:
        """Record a status; returns HubSpot's ``setStatusSuccessReason``."""
        statuses = self._statuses.setdefault(email, {})
        previous = statuses.get(subscription_id)
        if previous is not None and previous.state == state:
            return "NO_STATUS_CHANGE"
        statuses[subscription_id] = _Status(state, iso_now(), source, legal_basis)
        if state == "SUBSCRIBED" and previous is not None and previous.state == "UNSUBSCRIBED":
            return "RESUBSCRIBE_OCCURRED"
        return "REQUESTED_CHANGE_OCCURRED"

    def _opt_out_of_all(self, email: str, *, source: str) -> None:
        self._opted_out_of_all.setdefault(email, iso_now())
        for subscription_id in self._definitions:
            self._set_status(email, subscription_id, "UNSUBSCRIBED", source, None)

    def _status_wire(
        self, email: str, subscription_id: int, status: _Status, reason: str | None = None
    ) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "subscriberIdString": email,
            "subscriptionId": subscription_id,
            "subscriptionName": f"Marketing email {subscription_id}",
            "channel": "EMAIL",
            "status": status.state,
            "source": status.source,
            "timestamp": status.timestamp,
        }
        if status.legal_basis is not None:
            wire["legalBasis"] = status.legal_basis
        if reason is not None:
            wire["setStatusSuccessReason"] = reason
        return wire

    def _read_emails(self, request: Request) -> tuple[list[str], list[dict[str, Any]]]:
        """Valid, normalised emails of a ``BatchInputString`` body and errors for the rest."""
        inputs = self._json(request, BATCH_STRINGS_BODY)["inputs"]
        self._check_batch_size(inputs)
        emails: list[str] = []
        invalid: list[str] = []
        for raw in inputs:
            email = raw.strip().lower()
            (emails if is_valid_email(email) else invalid).append(raw)
        errors = []
        if invalid:
            errors.append(
                _standard_error(
                    "VALIDATION_ERROR",
                    "Some subscriber ids are not valid email addresses.",
                    {"subscriberIdString": invalid},
                    "INVALID_EMAIL",
                )
            )
        return list(dict.fromkeys(e.strip().lower() for e in emails)), errors

    def _read_statuses(self, request: Request, match: re.Match[str]) -> Response:
        started = iso_now()
        emails, errors = self._read_emails(request)
        with self._lock:
            results = [
                {
                    "subscriberIdString": email,
                    "statuses": [
                        self._status_wire(email, sid, status)
                        for sid, status in self._statuses.get(email, {}).items()
                    ],
                }
                for email in emails
            ]
        return self._batch_body(self._shuffled(results), errors, started)

    def _write_statuses(self, request: Request, match: re.Match[str]) -> Response:
        started = iso_now()
        inputs = self._json(request, STATUS_WRITE_BODY)["inputs"]
        self._check_batch_size(inputs)
        results, errors = [], []
        with self._lock:
            for item in inputs:
                email = item["subscriberIdString"].strip().lower()
                sid = item["subscriptionId"]
                problem = None
                if not is_valid_email(email):
                    problem = ("INVALID_EMAIL", f"{item['subscriberIdString']} is not an email")
                elif sid not in self._definitions:
                    problem = ("SUBSCRIPTION_NOT_FOUND", f"Subscription {sid} does not exist")
                elif email in self._blocklist:
                    problem = ("BLOCKLISTED_EMAIL", f"{email} was permanently deleted (GDPR)")
                if problem is not None:
                    context = {"subscriberIdString": [item["subscriberIdString"]]}
                    errors.append(
                        _standard_error("VALIDATION_ERROR", problem[1], context, problem[0])
                    )
                    continue
                reason = self._set_status(
                    email, sid, item["statusState"], "API", item.get("legalBasis")
                )
                status = self._statuses[email][sid]
                results.append(self._status_wire(email, sid, status, reason))
        # The spec declares only 200 for batch/write: per-input errors ride in a 200.
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": self._shuffled(results),
            "requestedAt": started,
            "startedAt": started,
            "completedAt": iso_now(),
        }
        if errors:
            body["numErrors"] = len(errors)
            body["errors"] = errors
        return json_response(HTTPStatus.OK, body)

    def _unsubscribe_all(self, request: Request, match: re.Match[str]) -> Response:
        started = iso_now()
        emails, errors = self._read_emails(request)
        verbose = request.query_value("verbose") == "true"
        with self._lock:
            results = []
            for email in emails:
                self._opt_out_of_all(email, source="API")
                result: dict[str, Any] = {"subscriberIdString": email}
                if verbose:
                    result["statuses"] = [
                        self._status_wire(email, sid, status, "UNSUBSCRIBE_FROM_ALL_OCCURRED")
                        for sid, status in self._statuses[email].items()
                    ]
                results.append(result)
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": self._shuffled(results),
            "startedAt": started,
            "completedAt": iso_now(),
        }
        if errors:
            body["numErrors"] = len(errors)
            body["errors"] = errors
        return json_response(HTTPStatus.OK, body)

    def _read_unsubscribe_all(self, request: Request, match: re.Match[str]) -> Response:
        started = iso_now()
        emails, errors = self._read_emails(request)
        with self._lock:
            results = [
                {
                    "subscriberIdString": email,
                    "wideStatuses": [
                        {
                            "subscriberIdString": email,
                            "channel": "EMAIL",
                            "status": "UNSUBSCRIBED",
                            "timestamp": self._opted_out_of_all[email],
                            "wideStatusType": "PORTAL_WIDE",
                        }
                    ]
                    if email in self._opted_out_of_all
                    else [],
                }
                for email in emails
            ]
        return self._batch_body(self._shuffled(results), errors, started)
