"""``GET /api/profiles``: filtering, sorting, sparse fieldsets and the optional
subscriptions field.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from infra.sandbox._http import Request, Response
from infra.sandbox.klaviyo.filters import _Condition
from infra.sandbox.klaviyo.parsing import KlaviyoParsing
from infra.sandbox.klaviyo.records import _Profile
from infra.sandbox.klaviyo.wire import (
    LOCATION_KEYS,
    PAGE_MAX,
    PROFILE_ATTRIBUTES,
    PROFILE_FILTERS,
    _invalid,
)


class ProfileReads(KlaviyoParsing):
    """Profile reads."""

    # -- profiles --------------------------------------------------------------------------------
    _PROFILE_FIELDS = frozenset(
        {
            *PROFILE_ATTRIBUTES,
            "created",
            "updated",
            "id",
            "last_event_date",
            "location",
            "properties",
            "subscriptions",
            "subscriptions.email",
            "subscriptions.email.marketing",
            "subscriptions.email.marketing.consent",
            "subscriptions.email.marketing.suppression",
            "subscriptions.email.marketing.list_suppressions",
            "subscriptions.email.marketing.can_receive_email_marketing",
            "subscriptions.email.marketing.consent_timestamp",
            "subscriptions.email.marketing.last_updated",
            "subscriptions.email.marketing.method",
            "subscriptions.email.marketing.method_detail",
            "subscriptions.email.marketing.custom_method_detail",
            "subscriptions.email.marketing.double_optin",
            "predictive_analytics",
            *(f"location.{part}" for part in (*LOCATION_KEYS, "latitude", "longitude")),
        }
    )

    _PROFILE_SORTS = frozenset(
        {
            "created",
            "email",
            "id",
            "updated",
            "subscriptions.email.marketing.suppression.timestamp",
            "subscriptions.email.marketing.list_suppressions.timestamp",
        }
    )

    def _get_profiles(self, request: Request) -> Response:
        values = self._query(
            request,
            {
                "additional-fields[profile]",
                "fields[conversation]",
                "fields[profile]",
                "fields[push-token]",
                "filter",
                "include",
                "page[cursor]",
                "page[size]",
                "sort",
            },
        )
        extra = self._csv(
            values, "additional-fields[profile]", {"subscriptions", "predictive_analytics"}
        )
        sparse = self._csv(values, "fields[profile]", self._PROFILE_FIELDS)
        self._csv(values, "include", {"conversations", "push-tokens"})
        size = self._page_size(values, 20, PAGE_MAX)
        conditions = self._filter(values, PROFILE_FILTERS)
        sort = values.get("sort", "id")
        if sort.lstrip("-") not in self._PROFILE_SORTS:
            raise _invalid(f"'{sort}' is not a valid sort field.", parameter="sort")
        with self._lock:
            chosen = [p for p in self._candidates(conditions) if self._matches(p, conditions)]
            chosen.sort(key=lambda p: self._sort_key(p, sort.lstrip("-")), reverse=sort[0] == "-")
            base = self._base(request)
            wire = [
                self._sparse(p.to_wire(base, with_subscriptions="subscriptions" in extra), sparse)
                for p in chosen
            ]
            return self._page(request, wire, size, values, "profiles")

    def _candidates(self, conditions: list[_Condition]) -> Iterable[_Profile]:
        """Profiles an email condition can match (through the email index), else all."""
        for condition in conditions:
            if condition.name == "email":
                wanted = [condition.value] if condition.op == "equals" else condition.value
                found = (self._by_email(str(email)) for email in wanted)
                return sorted(
                    {p.id: p for p in found if p is not None}.values(), key=lambda p: p.id
                )
        return list(self._profiles.values())

    @staticmethod
    def _sparse(profile: dict[str, Any], fields: list[str]) -> dict[str, Any]:
        if not fields:
            return profile
        roots = {name.split(".", 1)[0] for name in fields}
        profile["attributes"] = {k: v for k, v in profile["attributes"].items() if k in roots}
        return profile

    @staticmethod
    def _sort_key(profile: _Profile, name: str) -> Any:
        if name == "email":
            return profile.email or ""
        if name in {"created", "updated"}:
            return getattr(profile, name)
        if name.endswith("suppression.timestamp"):
            return max(
                (t for _, t in profile.suppressions), default=datetime.min.replace(tzinfo=UTC)
            )
        if name.endswith("list_suppressions.timestamp"):
            return max(
                (t for _, _, t in profile.list_suppressions),
                default=datetime.min.replace(tzinfo=UTC),
            )
        return profile.id

    @staticmethod
    def _matches(profile: _Profile, conditions: list[_Condition]) -> bool:
        """All conditions hold; conditions on one suppression array hold for one entry."""
        prefix_global = "subscriptions.email.marketing.suppression."
        prefix_list = "subscriptions.email.marketing.list_suppressions."
        on_global = [c for c in conditions if c.name.startswith(prefix_global)]
        on_lists = [c for c in conditions if c.name.startswith(prefix_list)]
        plain = [c for c in conditions if c not in on_global and c not in on_lists]
        simple = {
            "id": profile.id,
            "email": profile.email,
            "phone_number": profile.attributes.get("phone_number"),
            "external_id": profile.attributes.get("external_id"),
            "_kx": None,
            "created": profile.created,
            "updated": profile.updated,
        }
        if not all(c.test(simple[c.name]) for c in plain):
            return False
        if on_global and not any(
            all(
                c.test({"reason": reason, "timestamp": at}[c.name.removeprefix(prefix_global)])
                for c in on_global
            )
            for reason, at in profile.suppressions
        ):
            return False
        return not on_lists or any(
            all(
                c.test(
                    {"list_id": list_id, "reason": reason, "timestamp": at}[
                        c.name.removeprefix(prefix_list)
                    ]
                )
                for c in on_lists
            )
            for list_id, reason, at in profile.list_suppressions
        )
