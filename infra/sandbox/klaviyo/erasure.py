"""Data-privacy deletion jobs: a profile named by email, phone number or id disappears
shortly after the job is accepted.
"""

from __future__ import annotations

from http import HTTPStatus

from infra.sandbox._http import Request, Response, empty_response
from infra.sandbox.klaviyo.parsing import KlaviyoParsing
from infra.sandbox.klaviyo.wire import _invalid


class DeletionJobs(KlaviyoParsing):
    """``/api/data-privacy-deletion-jobs``."""

    # -- deletion --------------------------------------------------------------------------------
    def _delete_profile(self, request: Request) -> Response:
        self._query(request, ())
        data = self._resource(self._body(request), "data-privacy-deletion-job")
        profile = data["attributes"].get("profile")
        inner = profile.get("data") if isinstance(profile, dict) else None
        if not isinstance(inner, dict) or inner.get("type") != "profile":
            raise _invalid(
                "'profile.data' must be {type: 'profile', ...}.",
                pointer="/data/attributes/profile/data",
            )
        given = dict(inner.get("attributes") or {})
        if inner.get("id"):
            given["id"] = inner["id"]
        identifiers = {k: v for k, v in given.items() if k in {"email", "phone_number", "id"} and v}
        if len(identifiers) != 1:
            raise _invalid(
                "Exactly one of email, phone_number or id is required; got "
                f"{sorted(identifiers) or 'none'}.",
                pointer="/data/attributes/profile/data",
            )
        ((kind, value),) = identifiers.items()
        with self._lock:
            self._pending.append(lambda: self._apply_deletion(kind, str(value)))
        return empty_response(HTTPStatus.ACCEPTED)

    def _apply_deletion(self, kind: str, value: str) -> None:
        for profile in list(self._profiles.values()):
            hit = (
                (kind == "email" and (profile.email or "").lower() == value.strip().lower())
                or (kind == "id" and profile.id == value)
                or (kind == "phone_number" and profile.attributes.get("phone_number") == value)
            )
            if hit:
                del self._profiles[profile.id]
                self._email_index.pop((profile.email or "").lower(), None)
                for found in self._lists.values():
                    found.members.pop(profile.id, None)
                self.deletions.append(profile.email or profile.id)
