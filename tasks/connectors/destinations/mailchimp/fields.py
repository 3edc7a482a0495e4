"""Mailchimp account probe and merge fields: checked against the mapping, created if allowed."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from tasks.connectors.destinations.mailchimp.client import (
    MAX_PAGES,
    PAGE_SIZE,
    MailchimpClient,
    _Transient,
)
from tasks.connectors.destinations.mailchimp.responses import _json_object, _short
from tasks.connectors.destinations.protocol import FieldSpec, FieldType
from tasks.connectors.http import RetryPolicy
from tasks.connectors.redact import redact
from tasks.errors import PublishError

_MERGE_TAG = re.compile(r"^[A-Z0-9_]{1,10}$")
_COMPATIBLE_TYPES: Mapping[FieldType, frozenset[str]] = {
    "text": frozenset({"text", "radio", "dropdown", "phone", "url", "imageurl", "zip"}),
    "number": frozenset({"number"}),
    "date": frozenset({"date"}),
    "boolean": frozenset({"text", "radio", "dropdown"}),
}
"""Mailchimp merge field types that can hold a value of each of our field types."""
_CREATED_TYPE: Mapping[FieldType, str] = {
    "text": "text",
    "number": "number",
    "date": "date",
    "boolean": "text",  # Mailchimp has no boolean merge field: "true" / "false" in a text field
}


class MailchimpFields(MailchimpClient):
    """``GET /3.0/ping``, the lists, and their merge fields (``/lists/{id}/merge-fields``)."""

    def probe(self, audiences: Sequence[str], *, policy: RetryPolicy | None = None) -> str:
        """``GET /3.0/ping`` (reachable, key accepted), then ``GET /3.0/lists/{id}`` per list."""
        self._get("/3.0/ping", what="ping", policy=policy)
        for audience in audiences:
            params = {"fields": "id,name"}
            self._get(f"/3.0/lists/{audience}", params=params, what=audience, policy=policy)
        return f"ping ok, {len(audiences)} lists readable"

    def ensure_fields(
        self, audience: str, fields: Sequence[FieldSpec], *, create: bool
    ) -> list[str]:
        """Check each field's merge tag exists with a type that can hold its values; create the
        missing ones when ``create`` (never retypes an existing field: Mailchimp cannot)."""
        bad_names = [f.name for f in fields if not _MERGE_TAG.match(f.name)]
        if bad_names:
            raise PublishError(
                f"mailchimp list {audience!r}: merge tags must be 1-10 upper-case letters, "
                f"digits or underscores: {', '.join(repr(n) for n in bad_names)}"
            )
        existing = self._merge_field_types(audience)
        mistyped = [
            f"{f.name} is a {existing[f.name]} field, which cannot hold {f.type} values"
            for f in fields
            if f.name in existing and existing[f.name] not in _COMPATIBLE_TYPES[f.type]
        ]
        missing = [f for f in fields if f.name not in existing]
        if mistyped or (missing and not create):
            problems = [*mistyped, *(f"{f.name} ({f.type}) does not exist" for f in missing)]
            raise PublishError(
                f"mailchimp list {audience!r}: merge fields do not match the mapping: "
                + "; ".join(problems)
                + ("" if create else " (set the mapping to create missing fields, or add them)")
            )
        created = [spec.name for spec in missing if self._create_merge_field(audience, spec)]
        return created

    def _merge_field_types(self, audience: str) -> dict[str, str]:
        types: dict[str, str] = {}
        offset = 0
        for _ in range(MAX_PAGES):
            response = self._get(
                f"/3.0/lists/{audience}/merge-fields",
                params={"count": PAGE_SIZE, "offset": offset},
                what=audience,
            )
            body = _json_object(response, audience)
            page = body.get("merge_fields") or []
            types.update((str(f.get("tag")), str(f.get("type"))) for f in page)
            offset += len(page)
            if not page or offset >= int(body.get("total_items") or 0):
                return types
        raise PublishError(f"mailchimp list {audience!r}: merge fields exceed {MAX_PAGES} pages")

    def _create_merge_field(self, audience: str, spec: FieldSpec) -> bool:
        """Create one merge field; ``False`` when another run created it first (same type)."""
        body = {
            "tag": spec.name,
            "name": spec.label or spec.name,
            "type": _CREATED_TYPE[spec.type],
            "required": False,
            "public": False,
        }
        path = f"/3.0/lists/{audience}/merge-fields"
        # Not idempotent: a resend after a timeout could meet "already exists"; the next
        # ensure_fields then finds the field and moves on.
        response = self._send(
            self._client.build_request("POST", path, json=body), audience, idempotent=False
        )
        if not isinstance(response, _Transient) and response.status_code == 200:
            return True
        now = self._merge_field_types(audience).get(spec.name)
        if now is not None and now in _COMPATIBLE_TYPES[spec.type]:
            return False
        reason = response.reason if isinstance(response, _Transient) else _short(response)
        raise PublishError(
            redact(f"mailchimp list {audience!r}: creating merge field {spec.name}: {reason}")
        )
