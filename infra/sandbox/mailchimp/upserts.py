"""The batch endpoint (``POST /lists/{id}``) and the upsert logic it shares with ``PUT``:
status transitions, merge values, tags, per-member errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from infra.sandbox._http import Request, Response, json_response
from infra.sandbox.mailchimp.parsing import MailchimpParsing, _parse_member, _query_bool
from infra.sandbox.mailchimp.records import _Member, _MemberInput
from infra.sandbox.mailchimp.wire import (
    BATCH_MAX_MEMBERS,
    COMPLIANCE_STATUSES,
    MemberError,
    _invalid,
    is_valid_email,
    subscriber_hash,
)
from infra.sandbox.mailchimp_merge import MergeValueError, check_merge_values, missing_required


def _check_status_change(member: _Member, new_status: str) -> None:
    """Refuse to re-subscribe someone who unsubscribed (Mailchimp's compliance state).

    Archiving does not wipe that history: an archived member is judged by its status before
    archiving.
    """
    current = member.status_before_archive if member.archived else member.status
    if new_status == "subscribed" and current in COMPLIANCE_STATUSES:
        raise MemberError(
            "Member In Compliance State",
            f"{member.email_address} is in a compliance state due to unsubscribe, bounce, or "
            "compliance review and cannot be subscribed.",
        )


def _batch_error(
    email: str,
    message: str,
    code: str = "ERROR_GENERIC",
    field_name: str = "",
    field_message: str = "",
) -> dict[str, str]:
    return {
        "email_address": email,
        "error": message,
        "error_code": code,
        "field": field_name,
        "field_message": field_message,
    }


class MemberUpserts(MailchimpParsing):
    """Batch subscribe and the shared upsert logic."""

    def _is_member(self, list_id: str, member_hash: str) -> bool:
        """True when ``member_hash`` is on the list and not archived."""
        member = self._store(list_id).get(member_hash)
        return member is not None and not member.archived

    # -- batch and the shared upsert logic --------------------------------------------------
    def _batch(self, request: Request, list_id: str) -> Response:
        body = self._json(request)
        if not isinstance(body, dict) or not isinstance(body.get("members"), list):
            raise _invalid(
                "The resource submitted could not be validated.",
                "members",
                "Schema describes array, but 'members' is missing or not an array.",
            )
        raw_members = body["members"]
        if len(raw_members) > BATCH_MAX_MEMBERS:
            raise _invalid(
                f"A batch may contain at most {BATCH_MAX_MEMBERS} members; got {len(raw_members)}.",
                "members",
                f"at most {BATCH_MAX_MEMBERS} items",
            )
        flags = {k: body.get(k, False) for k in ("update_existing", "sync_tags")}
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise _invalid(f"{name} must be a boolean.", name, "Value must be a boolean.")
        inputs = [
            _parse_member(raw, f"members.{i}", email_required=True)
            for i, raw in enumerate(raw_members)
        ]
        skip_duplicates = _query_bool(request, "skip_duplicate_check")
        skip_merge_validation = _query_bool(request, "skip_merge_validation")
        for payload in inputs:
            payload.skip_merge_validation = skip_merge_validation
        with self._lock:
            self._store(list_id)  # an unknown list is a 404, and logs nothing
            self._member_log.extend(
                (list_id, (m.email or "").strip().lower(), m.status) for m in inputs
            )
            result = self._apply_batch(list_id, inputs, flags, skip_duplicates=skip_duplicates)
        return json_response(HTTPStatus.OK, result)

    def _apply_batch(
        self,
        list_id: str,
        inputs: list[_MemberInput],
        flags: Mapping[str, bool],
        *,
        skip_duplicates: bool,
    ) -> dict[str, Any]:
        created: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        errors: list[dict[str, str]] = []
        seen: set[str] = set()
        for payload in inputs:
            email = (payload.email or "").strip()
            key = subscriber_hash(email)
            if key in seen:
                if not skip_duplicates:
                    errors.append(_batch_error(email, f"{email} appears more than once."))
                continue
            seen.add(key)
            if self._refusals[(list_id, key)] > 0:
                self._refusals[(list_id, key)] -= 1
                errors.append(_batch_error(email, f"{email} could not be processed; try again."))
                continue
            try:
                if self._is_member(list_id, key) and not flags["update_existing"]:
                    raise MemberError(
                        "Member Exists",
                        f"{email} is already a list member; set update_existing to update it.",
                        code="ERROR_CONTACT_EXISTS",
                    )
                member, is_new = self._apply(
                    list_id,
                    payload,
                    update_existing=flags["update_existing"],
                    sync_tags=flags["sync_tags"],
                )
            except MemberError as exc:
                errors.append(
                    _batch_error(email, exc.message, exc.code, exc.field_name, exc.field_message)
                )
                continue
            (created if is_new else updated).append(self._wire(list_id, member))
        return {
            "new_members": created,
            "updated_members": updated,
            "errors": errors,
            "total_created": len(created),
            "total_updated": len(updated),
            "error_count": len(errors),
            "_links": [],
        }

    def _apply(
        self,
        list_id: str,
        payload: _MemberInput,
        *,
        update_existing: bool,
        sync_tags: bool,
    ) -> tuple[_Member, bool]:
        """Create or update one member; raises :class:`MemberError` for per-member failures.

        Returns ``(member, created)``. An archived member is revived (counts as created) but
        keeps its unsubscribe history for the compliance check.
        """
        email = (payload.email or "").strip()
        if not is_valid_email(email):
            raise MemberError(
                "Invalid Resource",
                f"{email or '(blank)'} looks fake or invalid, please enter a real email address.",
            )
        key = subscriber_hash(email)
        if key in self._forgotten[list_id]:
            raise MemberError(
                "Forgotten Email Not Subscribed",
                f"{email} was permanently deleted and cannot be re-imported. The contact must "
                "re-subscribe to get back on the list.",
            )
        store = self._store(list_id)
        member = store.get(key)
        values = self._merge_values(list_id, payload)
        if member is None or member.archived:
            return self._create(list_id, email, payload, values, previous=member), True
        if payload.status is not None and update_existing:
            _check_status_change(member, payload.status)
            member.status = payload.status
        member.merge_fields.update(values)
        if payload.tags is not None and sync_tags:
            member.tags = []
        self._add_tags(member, payload.tags)
        member.last_changed = self._stamp()
        return member, False

    def _merge_values(self, list_id: str, payload: _MemberInput) -> dict[str, Any]:
        """``payload``'s merge values checked against the audience's fields."""
        try:
            return check_merge_values(payload.merge_fields, self._merge_fields[list_id])
        except MergeValueError as exc:
            raise MemberError(
                "Invalid Resource",
                f"{payload.email}: Your merge fields were invalid. {exc.tag}: {exc.message}",
                field_name=exc.tag,
                field_message=exc.message,
            ) from exc

    def _create(
        self,
        list_id: str,
        email: str,
        payload: _MemberInput,
        values: dict[str, Any],
        *,
        previous: _Member | None,
    ) -> _Member:
        status = payload.status or payload.status_if_new
        if status is None:
            raise MemberError(
                "Invalid Resource", f"{email}: provide status or status_if_new for a new member."
            )
        if previous is not None:
            _check_status_change(previous, status)
        missing = missing_required(values, self._merge_fields[list_id])
        if missing and not payload.skip_merge_validation:
            raise MemberError(
                "Invalid Resource",
                f"{email}: Your merge fields were invalid. {missing[0]}: Please enter a value",
                field_name=missing[0],
                field_message="Please enter a value",
            )
        if previous is None:
            self._seq += 1
        stamp = self._stamp()
        member = _Member(
            email_address=email,
            status=status,
            last_changed=stamp,
            seq=previous.seq if previous is not None else self._seq,
            timestamp_signup=stamp,
        )
        member.merge_fields.update(values)
        self._add_tags(member, payload.tags)
        self._store(list_id)[subscriber_hash(email)] = member
        return member

    def _add_tags(self, member: _Member, tags: list[str] | None) -> None:
        for name in tags or ():
            self._tag_ids.setdefault(name, len(self._tag_ids) + 1)
            if name not in member.tags:
                member.tags.append(name)
