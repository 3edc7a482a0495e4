"""Klaviyo profiles and list membership: probe, ``ensure_fields``, upsert (import jobs), remove."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from tasks.connectors.destinations.klaviyo.client import (
    FINAL_OK,
    IMPORT_BUDGET_BYTES,
    LIST_WRITE_MAX,
    LOOKUP_MAX,
    PROFILE_MAX_BYTES,
    RUNNING,
    KlaviyoClient,
)
from tasks.connectors.destinations.klaviyo.payloads import (
    STANDARD_ATTRIBUTES,
    _field_problem,
    _filter_string,
    is_sendable_email,
)
from tasks.connectors.destinations.klaviyo.responses import _POINTER_INDEX, _failed, _JobOutcome
from tasks.connectors.destinations.protocol import FieldSpec, FieldValue, Member, RecordResult
from tasks.connectors.destinations.wire import chunks
from tasks.connectors.http import RetryPolicy
from tasks.errors import PublishError


class KlaviyoProfiles(KlaviyoClient):
    """Profiles (bulk import jobs) and list relationships; the field check needs no call."""

    # -- probe -----------------------------------------------------------------------------------
    def probe(self, audiences: Sequence[str], *, policy: RetryPolicy | None = None) -> str:
        """``GET /api/lists`` (key and revision accepted), then each audience's list by id."""
        self._send("GET", "/api/lists", params={"page[size]": "1"}, policy=policy)
        names = []
        for list_id in audiences:
            body = self._json(
                self._send(
                    "GET",
                    "/api/lists",
                    params={"filter": f"equals(id,{_filter_string(list_id)})"},
                    policy=policy,
                )
            )
            found = body.get("data") or []
            if not found:
                raise PublishError(f"klaviyo: list {list_id!r} does not exist in this account")
            names.append(str((found[0].get("attributes") or {}).get("name") or list_id))
        return f"api key accepted, {len(names)} lists readable ({', '.join(names)})"

    # -- fields ----------------------------------------------------------------------------------
    def ensure_fields(
        self, audience: str, fields: Sequence[FieldSpec], *, create: bool
    ) -> list[str]:
        """Check the mapping against Klaviyo's profile model (no API call; see package doc)."""
        problems = [p for spec in fields if (p := _field_problem(spec, self._tags_property))]
        if problems:
            raise PublishError(
                f"klaviyo list {audience!r}: the field mapping does not fit Klaviyo profiles: "
                + "; ".join(problems)
            )
        return []

    # -- upsert ----------------------------------------------------------------------------------
    def upsert(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        """Import members (properties and list membership) job by job; one result each."""
        sendable: list[tuple[Member, dict[str, Any]]] = []
        for member in members:
            profile = self._profile(member)
            size = len(json.dumps(profile, separators=(",", ":")).encode())
            if not is_sendable_email(member.email):
                yield _failed(member, f"{member.email!r} is not an email address Klaviyo accepts")
            elif size > PROFILE_MAX_BYTES:
                yield _failed(
                    member, f"profile is {size} bytes; Klaviyo accepts at most {PROFILE_MAX_BYTES}"
                )
            else:
                sendable.append((member, profile))
        for batch in self._import_batches(sendable):
            yield from self._import(audience, batch)

    def _import_batches(
        self, items: list[tuple[Member, dict[str, Any]]]
    ) -> Iterator[list[tuple[Member, dict[str, Any]]]]:
        """Batches of at most ``batch_size`` profiles and about 4.5 MB."""
        batch: list[tuple[Member, dict[str, Any]]] = []
        size = 0
        for item in items:
            item_size = len(json.dumps(item[1], separators=(",", ":")).encode()) + 1
            if batch and (len(batch) >= self._batch_size or size + item_size > IMPORT_BUDGET_BYTES):
                yield batch
                batch, size = [], 0
            batch.append(item)
            size += item_size
        if batch:
            yield batch

    def _profile(self, member: Member) -> dict[str, Any]:
        attributes: dict[str, Any] = {"email": member.email}
        location: dict[str, FieldValue] = {}
        properties: dict[str, Any] = {}
        for name, value in member.fields.items():
            if name in STANDARD_ATTRIBUTES:
                attributes[name] = value
            elif name.startswith("location."):
                location[name.removeprefix("location.")] = value
            else:
                properties[name] = value
        if member.tags:
            properties[self._tags_property] = sorted(member.tags)
        if location:
            attributes["location"] = location
        if properties:
            attributes["properties"] = properties
        return {"type": "profile", "attributes": attributes}

    def _import(
        self, audience: str, batch: list[tuple[Member, dict[str, Any]]]
    ) -> list[RecordResult]:
        body = {
            "data": {
                "type": "profile-bulk-import-job",
                "attributes": {"profiles": {"data": [profile for _, profile in batch]}},
                "relationships": {"lists": {"data": [{"type": "list", "id": audience}]}},
            }
        }
        created = self._json(
            self._send("POST", "/api/profile-bulk-import-jobs", body=body, expect=(202,))
        )
        job_id = str((created.get("data") or {}).get("id") or "")
        if not job_id:
            raise PublishError(f"klaviyo list {audience!r}: import job answer without a job id")
        outcome = self._wait(job_id)
        members = [member for member, _ in batch]
        if outcome.status in RUNNING:
            return [
                _failed(
                    m,
                    f"import job {job_id} still {outcome.status} after "
                    f"{self._poll_timeout:g}s; sent again next run",
                    retryable=True,
                )
                for m in members
            ]
        if outcome.status != FINAL_OK:
            return [
                _failed(
                    m, f"import job {job_id} ended {outcome.status!r} at Klaviyo", retryable=True
                )
                for m in members
            ]
        # A job that reports no failures has no import errors to read: one call saved per job.
        errors = self._import_errors(job_id, len(members)) if outcome.failed_count else {}
        unexplained = outcome.failed_count > len(errors)
        results = []
        for index, member in enumerate(members):
            if index in errors:
                results.append(_failed(member, errors[index], retryable=False))
            elif unexplained:
                results.append(
                    _failed(
                        member,
                        f"import job {job_id} reports {outcome.failed_count} failures but names "
                        f"{len(errors)}; sent again next run",
                        retryable=True,
                    )
                )
            else:
                results.append(RecordResult(member.contact_key, ok=True))
        return results

    def _wait(self, job_id: str) -> _JobOutcome:
        """Poll the job until it leaves queued/processing, or ``poll_timeout`` passes."""
        started = time.monotonic()
        max_polls = max(1, int(self._poll_timeout / max(self._poll_interval, 0.001)) + 1)
        outcome = _JobOutcome(job_id, "queued", 0)
        for _ in range(max_polls):
            body = self._json(self._send("GET", f"/api/profile-bulk-import-jobs/{job_id}"))
            attributes = (body.get("data") or {}).get("attributes") or {}
            outcome = _JobOutcome(
                job_id, str(attributes.get("status")), int(attributes.get("failed_count") or 0)
            )
            if outcome.status not in RUNNING:
                return outcome
            if time.monotonic() - started + self._poll_interval > self._poll_timeout:
                break
            self._sleep(self._poll_interval)
        return outcome

    def _import_errors(self, job_id: str, count: int) -> dict[int, str]:
        """Import errors by profile index (the job's ``source.pointer``)."""
        errors: dict[int, str] = {}
        for item in self._pages(
            f"/api/profile-bulk-import-jobs/{job_id}/import-errors",
            {"page[size]": str(self._page_size)},
        ):
            attributes = item.get("attributes") or {}
            pointer = str((attributes.get("source") or {}).get("pointer") or "")
            match = _POINTER_INDEX.match(pointer)
            if match is None or int(match.group(1)) >= count:
                continue
            errors[int(match.group(1))] = (
                f"{attributes.get('code', 'error')}: {attributes.get('detail', '')} ({pointer})"
            )
        return errors

    # -- remove ----------------------------------------------------------------------------------
    def remove(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        """Take members off the list (profile ids by email, then list deletes of 1000)."""
        ids: dict[str, str] = {}
        for chunk in chunks([m for m in members if is_sendable_email(m.email)], LOOKUP_MAX):
            ids.update(self._profile_ids([m.email for m in chunk]))
        for member in members:
            if not is_sendable_email(member.email):
                yield _failed(member, f"{member.email!r} is not an email address Klaviyo accepts")
            elif member.email.lower() not in ids:
                yield RecordResult(member.contact_key, ok=True)  # unknown: not on the list
        known = [m for m in members if m.email.lower() in ids]
        for chunk in chunks(known, LIST_WRITE_MAX):
            body = {"data": [{"type": "profile", "id": ids[m.email.lower()]} for m in chunk]}
            self._send(
                "DELETE", f"/api/lists/{audience}/relationships/profiles", body=body, expect=(204,)
            )
            yield from (RecordResult(m.contact_key, ok=True) for m in chunk)

    def _profile_ids(self, emails: Sequence[str]) -> dict[str, str]:
        quoted = ",".join(_filter_string(e) for e in emails)
        params = {
            "filter": f"any(email,[{quoted}])",
            "fields[profile]": "email",
            "page[size]": str(self._page_size),
        }
        found: dict[str, str] = {}
        for item in self._pages("/api/profiles", params):
            email = (item.get("attributes") or {}).get("email")
            if isinstance(email, str) and item.get("id"):
                found[email.lower()] = str(item["id"])
        return found
