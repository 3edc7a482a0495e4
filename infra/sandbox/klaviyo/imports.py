"""Bulk profile import jobs: creation, the job's progress on each read, per-profile
rejections and the import-errors collection.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import timedelta
from http import HTTPStatus
from typing import Any

from infra.sandbox._http import Request, Response, json_response
from infra.sandbox.klaviyo.parsing import KlaviyoParsing
from infra.sandbox.klaviyo.records import _ImportJob, _Profile
from infra.sandbox.klaviyo.wire import (
    _E164,
    IMPORT_JOB_FIELDS,
    IMPORT_MAX_BYTES,
    IMPORT_MAX_PROFILES,
    JSONAPI,
    PAGE_MAX,
    PROFILE_ATTRIBUTES,
    PROFILE_MAX_BYTES,
    _iso,
    _not_found,
    _now,
    is_valid_email,
)


class ImportJobs(KlaviyoParsing):
    """``/api/profile-bulk-import-jobs`` and its import errors."""

    # -- bulk import -----------------------------------------------------------------------------
    def _create_import(self, request: Request) -> Response:
        values = self._query(request, {"fields[profile-bulk-import-job]"})
        self._csv(values, "fields[profile-bulk-import-job]", IMPORT_JOB_FIELDS)
        data = self._resource(self._body(request, IMPORT_MAX_BYTES), "profile-bulk-import-job")
        profiles = self._profiles_of(data, IMPORT_MAX_PROFILES)
        with self._lock:
            list_ids = self._related_list(data, many=True)
            job = _ImportJob(f"job-{uuid.uuid4().hex[:20]}", copy.deepcopy(profiles), list_ids)
            if self._job_failures:
                job.fail_as = self._job_failures.popleft()
            self._jobs[job.id] = job
            return json_response(
                HTTPStatus.ACCEPTED,
                {"data": self._job_wire(job, self._base(request))},
                content_type=JSONAPI,
            )

    def _job_wire(self, job: _ImportJob, base: str) -> dict[str, Any]:
        link = f"{base}/api/profile-bulk-import-jobs/{job.id}"
        return {
            "type": "profile-bulk-import-job",
            "id": job.id,
            "attributes": {
                "status": job.status,
                "created_at": _iso(job.created_at),
                "total_count": len(job.profiles),
                "completed_count": job.completed_count,
                "failed_count": job.failed_count,
                "completed_at": _iso(job.completed_at) if job.completed_at else None,
                "expires_at": _iso(job.created_at + timedelta(days=7)),
                "started_at": _iso(job.started_at) if job.started_at else None,
            },
            "relationships": {
                "lists": {
                    "data": [{"type": "list", "id": list_id} for list_id in job.list_ids],
                    "links": {"self": f"{link}/relationships/lists", "related": f"{link}/lists"},
                },
                "profiles": {
                    "data": [{"type": "profile", "id": pid} for pid in job.profile_ids],
                    "links": {
                        "self": f"{link}/relationships/profiles",
                        "related": f"{link}/profiles",
                    },
                },
                "import-errors": {"links": {"related": f"{link}/import-errors"}},
            },
            "links": {"self": link},
        }

    def _get_import(self, request: Request, job_id: str) -> Response:
        values = self._query(
            request, {"fields[list]", "fields[profile-bulk-import-job]", "include"}
        )
        self._csv(values, "fields[profile-bulk-import-job]", IMPORT_JOB_FIELDS)
        self._csv(values, "fields[list]", {"created", "id", "name", "opt_in_process", "updated"})
        include = self._csv(values, "include", {"lists"})
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise _not_found(f"A profile bulk import job with id {job_id!r} does not exist.")
            self._advance(job)
            base = self._base(request)
            body: dict[str, Any] = {"data": self._job_wire(job, base)}
            if include:
                body["included"] = [self._list_wire(self._lists[i], base) for i in job.list_ids]
            return json_response(HTTPStatus.OK, body, content_type=JSONAPI)

    def _advance(self, job: _ImportJob) -> None:
        """Each read moves a job on; it finishes on the ``polls_to_finish``-th read."""
        if job.done:
            return
        job.reads += 1
        if job.status == "queued":
            job.status, job.started_at = "processing", _now()
        if job.reads < self.polls_to_finish:
            return
        if job.fail_as is not None:
            job.status, job.completed_at = job.fail_as, _now()
            job.failed_count = len(job.profiles)
            return
        for index, raw in enumerate(job.profiles):
            problem = self._import_one(raw, job.list_ids)
            if isinstance(problem, str):
                job.profile_ids.append(problem)
                job.completed_count += 1
            else:
                pointer, detail = problem
                job.failed_count += 1
                job.errors.append(
                    {
                        "type": "import-error",
                        "id": str(uuid.uuid4()),
                        "attributes": {
                            "code": "invalid",
                            "title": "Invalid input.",
                            "detail": detail,
                            "source": {
                                "pointer": f"/data/attributes/profiles/data/{index}{pointer}"
                            },
                            "original_payload": raw if isinstance(raw, dict) else {"value": raw},
                        },
                    }
                )
        job.status, job.completed_at = "complete", _now()

    def _import_one(self, raw: Any, list_ids: list[str]) -> str | tuple[str, str]:
        """Apply one profile of an import; its id, or ``(pointer, detail)`` when rejected."""
        if not isinstance(raw, dict) or raw.get("type") != "profile":
            return "", "Each profile is {type: 'profile', attributes: {...}}."
        attributes = raw.get("attributes")
        if not isinstance(attributes, dict):
            return "/attributes", "'attributes' must be an object."
        if len(json.dumps(raw).encode()) > PROFILE_MAX_BYTES:
            return "", f"A profile may be at most {PROFILE_MAX_BYTES} bytes."
        email = attributes.get("email")
        identifiers = [attributes.get(k) for k in ("email", "phone_number", "external_id", "_kx")]
        if not any(isinstance(value, str) and value for value in identifiers):
            return "/attributes", "A profile needs an email, phone_number, external_id or _kx."
        if email is not None and (not isinstance(email, str) or not is_valid_email(email.strip())):
            return "/attributes/email", f"Invalid email address {email!r}."
        rejection = self._take_rejection(str(email or "").strip().lower())
        if rejection is not None:
            return "/attributes/email", rejection
        phone = attributes.get("phone_number")
        if phone is not None and (not isinstance(phone, str) or not _E164.match(phone)):
            return "/attributes/phone_number", f"Invalid phone number {phone!r} (use E.164)."
        properties = attributes.get("properties")
        if properties is not None and not isinstance(properties, dict):
            return "/attributes/properties", "'properties' must be an object."
        if email is None:
            return "/attributes/email", "The stand-in imports profiles by email only."
        profile = self._find_or_create(email)
        for name in PROFILE_ATTRIBUTES[1:]:
            if name in attributes:
                profile.attributes[name] = attributes[name]
        if "location" in attributes:
            profile.location = attributes["location"]
        for key, value in (properties or {}).items():
            if value is None:
                profile.properties.pop(key, None)
            else:
                profile.properties[key] = value
        self._patch_properties(profile, raw.get("meta"))
        profile.touch()
        for list_id in list_ids:
            self._lists[list_id].members.setdefault(profile.id, _now())
        return profile.id

    def _take_rejection(self, email: str) -> str | None:
        """The import error set for ``email`` by :meth:`reject_on_import`, counting it down."""
        if email not in self._import_rejections:
            return None
        detail, left = self._import_rejections[email]
        if left is not None:
            if left <= 1:
                del self._import_rejections[email]
            else:
                self._import_rejections[email] = (detail, left - 1)
        return detail

    @staticmethod
    def _patch_properties(profile: _Profile, meta: Any) -> None:
        patch = meta.get("patch_properties") if isinstance(meta, dict) else None
        if not isinstance(patch, dict):
            return
        unset = patch.get("unset")
        for key in [unset] if isinstance(unset, str) else unset or []:
            profile.properties.pop(key, None)
        for key, value in (patch.get("append") or {}).items():
            current = profile.properties.get(key)
            items = current if isinstance(current, list) else ([] if current is None else [current])
            profile.properties[key] = [*items, value]
        for key, value in (patch.get("unappend") or {}).items():
            current = profile.properties.get(key)
            if isinstance(current, list):
                profile.properties[key] = [item for item in current if item != value]

    def _import_errors(self, request: Request, job_id: str) -> Response:
        values = self._query(request, {"fields[import-error]", "page[cursor]", "page[size]"})
        self._csv(
            values,
            "fields[import-error]",
            {"code", "detail", "id", "original_payload", "source", "source.pointer", "title"},
        )
        size = self._page_size(values, 20, PAGE_MAX)
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise _not_found(f"A profile bulk import job with id {job_id!r} does not exist.")
            return self._page(request, job.errors, size, values, f"import-errors:{job_id}")
