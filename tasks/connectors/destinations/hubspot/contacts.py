"""HubSpot contact properties and list membership: probe, ``ensure_fields``, upsert, remove."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from tasks.connectors.destinations.hubspot.client import HubSpotClient
from tasks.connectors.destinations.hubspot.payloads import (
    BOOL_OPTIONS,
    PROPERTY_KINDS,
    _emails_of,
    _unique_email_batches,
    format_value,
)
from tasks.connectors.destinations.hubspot.responses import _field_problem, _read_upsert, _result
from tasks.connectors.destinations.protocol import FieldSpec, Member, RecordResult
from tasks.connectors.destinations.wire import chunks
from tasks.connectors.http import RetryPolicy
from tasks.errors import PublishError


class HubSpotContacts(HubSpotClient):
    """Contact properties and list membership (CRM contacts, properties and lists v3)."""

    # -- probe and fields -------------------------------------------------------------------------
    def probe(self, audiences: Sequence[str], *, policy: RetryPolicy | None = None) -> str:
        """Reads only: the subscription types (the configured one must exist) and one page of
        each list's memberships (the list exists and the token may read it). ``policy``: the
        retries of a health check, shorter than a publish's."""
        body = self._body(
            self._call(
                "GET",
                "/communication-preferences/v4/definitions",
                what="read subscription types",
                policy=policy,
            ),
            "read subscription types",
        )
        ids = {str(d.get("id")) for d in body.get("results", []) if isinstance(d, dict)}
        if str(self._subscription_id) not in ids:
            raise PublishError(
                f"hubspot: subscription type {self._subscription_id} does not exist in this "
                f"portal (it has {sorted(ids)}); check subscription_type_id"
            )
        for audience in audiences:
            self._call(
                "GET",
                f"/crm/v3/lists/{audience}/memberships",
                params={"limit": 1},
                what=f"read list {audience}",
                policy=policy,
            )
        return f"subscription type {self._subscription_id} found, {len(audiences)} lists readable"

    def ensure_fields(
        self, audience: str, fields: Sequence[FieldSpec], *, create: bool
    ) -> list[str]:
        """Check the contact properties ``fields`` write; create missing ones when ``create``.

        A property with an incompatible type or a read-only value is never changed: it is an
        error either way, listed with every missing one in one :class:`PublishError`.
        """
        existing = self._read_properties()
        missing = [f for f in fields if f.name not in existing]
        problems = [
            problem
            for f in fields
            if f.name in existing and (problem := _field_problem(f, existing[f.name])) is not None
        ]
        if missing and not create:
            problems.append(
                "missing contact properties "
                + ", ".join(f"{f.name} ({f.type})" for f in missing)
                + " (allow creating fields for this destination, or create them in HubSpot)"
            )
        if problems:
            raise PublishError(
                f"hubspot: contact properties do not fit the mapping for list {audience}: "
                + "; ".join(problems)
            )
        return [self._create_property(f) for f in missing]

    def _read_properties(self) -> dict[str, dict[str, Any]]:
        what = "read contact properties"
        body = self._body(self._call("GET", "/crm/v3/properties/contacts", what=what), what)
        return {
            str(p["name"]): p
            for p in body.get("results", [])
            if isinstance(p, dict) and isinstance(p.get("name"), str)
        }

    def _create_property(self, spec: FieldSpec) -> str:
        kind, field_type = PROPERTY_KINDS[spec.type]
        payload: dict[str, Any] = {
            "name": spec.name,
            "label": spec.label or spec.name,
            "type": kind,
            "fieldType": field_type,
            "groupName": self._property_group,
        }
        if spec.type == "boolean":
            payload["options"] = [dict(o) for o in BOOL_OPTIONS]
        # 409: created meanwhile (another run); its type is checked on the next publish.
        self._call(
            "POST",
            "/crm/v3/properties/contacts",
            json=payload,
            ok=(201, 409),
            what=f"create contact property {spec.name!r}",
        )
        return spec.name

    # -- upsert and remove ------------------------------------------------------------------------
    def upsert(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        """Upsert contacts by email with their properties, then add them to list ``audience``."""
        tagged = sorted({m.contact_key for m in members if m.tags})
        if tagged:
            raise PublishError(
                f"hubspot: list {audience}: HubSpot contacts have no tags ({len(tagged)} members "
                "carry some); map the value to a contact property instead"
            )
        yield from self._pipelined(
            _unique_email_batches(members, self._batch_size),
            lambda batch: self._upsert_batch(audience, batch),
            _emails_of,
        )

    def _upsert_batch(self, audience: str, batch: Sequence[Member]) -> list[RecordResult]:
        what = f"upsert {len(batch)} contacts for list {audience}"
        inputs = [
            {
                "idProperty": "email",
                "id": member.email,
                "properties": {name: format_value(v) for name, v in member.fields.items()},
                "objectWriteTraceId": str(position),
            }
            for position, member in enumerate(batch)
        ]
        response = self._call(
            "POST",
            "/crm/v3/objects/contacts/batch/upsert",
            json={"inputs": inputs},
            ok=(200, 207),
            what=what,
        )
        outcome = _read_upsert(self._body(response, what), batch)
        added = {p: rid for p, rid in outcome.record_ids.items() if p not in outcome.errors}
        missing = self._add_to_list(audience, sorted(set(added.values())))
        return [
            _result(member, position, outcome, missing) for position, member in enumerate(batch)
        ]

    def _add_to_list(self, audience: str, record_ids: list[str]) -> set[str]:
        """Add records to the list; returns the ids HubSpot reported missing."""
        if not record_ids:
            return set()
        what = f"add {len(record_ids)} contacts to list {audience}"
        body = self._body(
            self._call(
                "PUT", f"/crm/v3/lists/{audience}/memberships/add", json=record_ids, what=what
            ),
            what,
        )
        return {str(r) for r in body.get("recordIdsMissing", [])}

    def remove(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        """Take members out of list ``audience``; the contacts stay in HubSpot. A person HubSpot
        does not know, or who is not on the list, is already out: that is a success."""
        yield from self._pipelined(
            chunks(members, self._batch_size),
            lambda batch: self._remove_batch(audience, batch),
            _emails_of,
        )

    def _remove_batch(self, audience: str, batch: Sequence[Member]) -> list[RecordResult]:
        ids = self._record_ids_by_email([m.email for m in batch])
        record_ids = sorted(set(ids.values()))
        if record_ids:
            what = f"remove {len(record_ids)} contacts from list {audience}"
            self._call(
                "PUT", f"/crm/v3/lists/{audience}/memberships/remove", json=record_ids, what=what
            )
        return [RecordResult(m.contact_key, ok=True) for m in batch]

    def _record_ids_by_email(self, emails: Sequence[str]) -> dict[str, str]:
        """Normalised email -> record id for the emails HubSpot knows (a 207 names the rest)."""
        what = f"look up {len(emails)} contacts by email"
        body = self._body(
            self._call(
                "POST",
                "/crm/v3/objects/contacts/batch/read",
                json={
                    "idProperty": "email",
                    "inputs": [{"id": e} for e in dict.fromkeys(emails)],
                    "properties": ["email"],
                    "propertiesWithHistory": [],
                },
                ok=(200, 207),
                what=what,
            ),
            what,
        )
        return {
            str(r["properties"]["email"]).strip().lower(): str(r["id"])
            for r in body.get("results", [])
            if isinstance(r, dict)
            and isinstance(r.get("properties"), dict)
            and r["properties"].get("email")
            and r.get("id")
        }
