"""Consent jobs: bulk subscribe, bulk unsubscribe (list or global) and bulk suppression,
each taking effect shortly after it is accepted.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from http import HTTPStatus
from typing import Any

from infra.sandbox._http import Request, Response, empty_response, json_response
from infra.sandbox.klaviyo.parsing import KlaviyoParsing
from infra.sandbox.klaviyo.wire import (
    CLEARED_BY_SUBSCRIBE,
    JSONAPI,
    SUBSCRIBE_MAX,
    SUPPRESS_MAX,
    UNSUBSCRIBE_MAX,
    _invalid,
    _iso,
    _now,
    _parse_datetime,
    is_valid_email,
)


class ConsentJobs(KlaviyoParsing):
    """Subscription, unsubscription and suppression jobs."""

    # -- consent jobs ----------------------------------------------------------------------------
    def _subscribe(self, request: Request) -> Response:
        self._query(request, ())
        data = self._resource(self._body(request), "profile-subscription-bulk-create-job")
        attributes = data["attributes"]
        historical = attributes.get("historical_import") is True
        profiles = self._profiles_of(data, SUBSCRIBE_MAX)
        work: list[tuple[str, datetime | None]] = []
        for index, raw in enumerate(profiles):
            where = f"/data/attributes/profiles/data/{index}"
            email, marketing = self._consent_entry(raw, where, "SUBSCRIBED")
            consented_at = marketing.get("consented_at")
            moment = None
            if consented_at is not None:
                if not historical:
                    raise _invalid(
                        "consented_at may only be sent with historical_import.",
                        pointer=f"{where}/attributes/subscriptions/email/marketing/consented_at",
                    )
                moment = _parse_datetime(str(consented_at))
                if moment > _now():
                    raise _invalid(
                        "consented_at must be in the past.",
                        pointer=f"{where}/attributes/subscriptions/email/marketing/consented_at",
                    )
            elif historical:
                raise _invalid(
                    "consented_at is required when historical_import is true.",
                    pointer=f"{where}/attributes/subscriptions/email/marketing",
                )
            work.append((email, moment))
        with self._lock:
            list_ids = self._related_list(data, many=False)
            self._pending.append(lambda: self._apply_subscribe(work, list_ids))
        return empty_response(HTTPStatus.ACCEPTED)

    def _apply_subscribe(
        self, work: list[tuple[str, datetime | None]], list_ids: list[str]
    ) -> None:
        for email, moment in work:
            profile = self._find_or_create(email)
            profile.consent, profile.consent_timestamp = "SUBSCRIBED", moment or _now()
            profile.consent_method = "API"
            profile.suppressions = [
                (r, t) for r, t in profile.suppressions if r not in CLEARED_BY_SUBSCRIBE
            ]
            profile.list_suppressions = [
                entry for entry in profile.list_suppressions if entry[0] not in list_ids
            ]
            for list_id in list_ids:
                self._lists[list_id].members.setdefault(profile.id, _now())
            profile.touch()

    def _unsubscribe(self, request: Request) -> Response:
        self._query(request, ())
        data = self._resource(self._body(request), "profile-subscription-bulk-delete-job")
        profiles = self._profiles_of(data, UNSUBSCRIBE_MAX)
        emails = [
            self._consent_entry(raw, f"/data/attributes/profiles/data/{i}", "UNSUBSCRIBED")[0]
            for i, raw in enumerate(profiles)
        ]
        with self._lock:
            list_ids = self._related_list(data, many=False)
            self._pending.append(lambda: self._apply_unsubscribe(emails, list_ids))
        return empty_response(HTTPStatus.ACCEPTED)

    def _apply_unsubscribe(self, emails: list[str], list_ids: list[str]) -> None:
        for email in emails:
            profile = self._find_or_create(email)
            at = _now()
            in_list = [i for i in list_ids if profile.id in self._lists[i].members]
            if in_list:
                for list_id in in_list:
                    self._lists[list_id].members.pop(profile.id, None)
                    profile.list_suppressions.append((list_id, "UNSUBSCRIBE", at))
                profile.touch()
            else:  # not in the given list (or no list): unsubscribed globally
                profile.consent, profile.consent_timestamp = "UNSUBSCRIBED", at
                profile.consent_method = "API"
                profile.suppress("UNSUBSCRIBE", at)

    @staticmethod
    def _consent_entry(raw: Any, where: str, consent: str) -> tuple[str, dict[str, Any]]:
        """``(email, marketing object)`` of one consent-job profile; 400 when malformed."""
        if not isinstance(raw, dict) or raw.get("type") != "profile":
            raise _invalid("Each profile is {type: 'profile', attributes: {...}}.", pointer=where)
        attributes = raw.get("attributes")
        if not isinstance(attributes, dict):
            raise _invalid("'attributes' must be an object.", pointer=f"{where}/attributes")
        email = attributes.get("email")
        if not isinstance(email, str) or not is_valid_email(email.strip()):
            raise _invalid(
                f"A valid email is required, got {email!r}.", pointer=f"{where}/attributes/email"
            )
        channels = attributes.get("subscriptions")
        marketing = (
            (channels.get("email") or {}).get("marketing") if isinstance(channels, dict) else None
        )
        if not isinstance(marketing, dict) or marketing.get("consent") != consent:
            raise _invalid(
                f"subscriptions.email.marketing.consent must be {consent!r}.",
                pointer=f"{where}/attributes/subscriptions/email/marketing/consent",
            )
        return email.strip(), marketing

    def _suppress(self, request: Request) -> Response:
        self._query(request, {"fields[profile-suppression-bulk-create-job]"})
        data = self._resource(self._body(request), "profile-suppression-bulk-create-job")
        profiles = self._profiles_of(data, SUPPRESS_MAX)
        emails: list[str] = []
        for index, raw in enumerate(profiles):
            attributes = raw.get("attributes") if isinstance(raw, dict) else None
            email = attributes.get("email") if isinstance(attributes, dict) else None
            if not isinstance(email, str) or not is_valid_email(email.strip()):
                raise _invalid(
                    f"A valid email is required, got {email!r}.",
                    pointer=f"/data/attributes/profiles/data/{index}/attributes/email",
                )
            emails.append(email.strip())
        job_id = f"sup-{uuid.uuid4().hex[:20]}"
        with self._lock:
            self._pending.append(lambda: self._apply_suppression(emails))
        link = f"{self._base(request)}/api/profile-suppression-bulk-create-jobs/{job_id}"
        body = {
            "data": {
                "type": "profile-suppression-bulk-create-job",
                "id": job_id,
                "attributes": {
                    "status": "queued",
                    "created_at": _iso(_now()),
                    "total_count": len(emails),
                    "completed_count": 0,
                    "completed_at": None,
                    "skipped_count": 0,
                },
                "links": {"self": link},
            },
            "links": {"self": link},
        }
        return json_response(HTTPStatus.ACCEPTED, body, content_type=JSONAPI)

    def _apply_suppression(self, emails: list[str]) -> None:
        for email in emails:
            self._find_or_create(email).suppress("USER_SUPPRESSED")
