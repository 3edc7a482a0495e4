"""What the Mailchimp stand-in stores (audience members), a member as a request gives it,
and an injected fault.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from infra.sandbox.mailchimp.wire import _now, subscriber_hash


@dataclass
class _Member:
    """One list member as stored by the stand-in."""

    email_address: str
    status: str
    merge_fields: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    last_changed: str = field(default_factory=_now)
    status_before_archive: str | None = None
    seq: int = 0
    """Creation order: the default order of reads, and the tie-break of sorted ones."""
    timestamp_signup: str = field(default_factory=_now)
    unsubscribe_reason: str | None = None

    @property
    def archived(self) -> bool:
        return self.status == "archived"

    def to_wire(self, list_id: str, tag_ids: Mapping[str, int]) -> dict[str, Any]:
        """The member as the API returns it."""
        member_hash = subscriber_hash(self.email_address)
        return {
            "id": member_hash,
            "email_address": self.email_address,
            "unique_email_id": member_hash[:10],
            "status": self.status,
            "merge_fields": copy.deepcopy(self.merge_fields),
            "tags": [{"id": tag_ids[name], "name": name} for name in self.tags],
            "tags_count": len(self.tags),
            "last_changed": self.last_changed,
            # Real timestamps, never "" (the spec types them date-time; see the specs README).
            "timestamp_signup": self.timestamp_signup,
            "timestamp_opt": self.timestamp_signup,
            "list_id": list_id,
            **({"unsubscribe_reason": self.unsubscribe_reason} if self.unsubscribe_reason else {}),
        }


@dataclass(frozen=True)
class _Fault:
    status: int
    body: bytes | None


@dataclass
class _MemberInput:
    """Validated fields of one member payload."""

    email: str | None
    status: str | None
    status_if_new: str | None
    merge_fields: dict[str, Any]
    tags: list[str] | None
    skip_merge_validation: bool = False
