"""The HubSpot route table: each operation's method, path pattern, allowed query
parameters and handler, plus the rate-limit headers every answer carries.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    query: Mapping[str, Callable[[str], bool]]
    """Allowed query parameters and a check of each value."""
    handler: str


def _is_bool(value: str) -> bool:
    return value in ("true", "false")


def _is_int(value: str) -> bool:
    return value.isdigit()


def _is_any(value: str) -> bool:
    return True


def _is_email_channel(value: str) -> bool:
    return value == "EMAIL"


_V4 = "/communication-preferences/v4"


_BUSINESS_UNIT = {"businessUnitId": _is_int}


ROUTES: tuple[_Route, ...] = (
    _Route("POST", re.compile(r"^/crm/v3/objects/contacts/batch/upsert$"), {}, "_upsert"),
    _Route(
        "POST",
        re.compile(r"^/crm/v3/objects/contacts/batch/read$"),
        {"archived": _is_bool},
        "_batch_read",
    ),
    _Route("POST", re.compile(r"^/crm/v3/objects/contacts/gdpr-delete$"), {}, "_gdpr_delete"),
    _Route(
        "GET",
        re.compile(r"^/crm/v3/properties/(?P<object>[^/]+)$"),
        {
            "archived": _is_bool,
            "dataSensitivity": lambda v: v in ("highly_sensitive", "non_sensitive", "sensitive"),
            "locale": _is_any,
            "properties": _is_any,
        },
        "_read_properties",
    ),
    _Route("POST", re.compile(r"^/crm/v3/properties/(?P<object>[^/]+)$"), {}, "_create_property"),
    _Route("POST", re.compile(r"^/crm/v3/lists$"), {}, "_create_list"),
    _Route(
        "GET",
        re.compile(r"^/crm/v3/lists/object-type-id/(?P<object>[^/]+)/name/(?P<name>[^/]+)$"),
        {"includeFilters": _is_bool},
        "_list_by_name",
    ),
    _Route(
        "GET",
        re.compile(r"^/crm/v3/lists/(?P<list>[^/]+)/memberships$"),
        {"after": _is_any, "before": _is_any, "limit": _is_int},
        "_memberships",
    ),
    _Route(
        "PUT",
        re.compile(r"^/crm/v3/lists/(?P<list>[^/]+)/memberships/(?P<action>add|remove)$"),
        {},
        "_update_memberships",
    ),
    _Route(
        "GET",
        re.compile(rf"^{_V4}/definitions$"),
        {**_BUSINESS_UNIT, "includeTranslations": _is_bool},
        "_read_definitions",
    ),
    _Route(
        "POST",
        re.compile(rf"^{_V4}/statuses/batch/read$"),
        {"channel": _is_email_channel, **_BUSINESS_UNIT},
        "_read_statuses",
    ),
    _Route("POST", re.compile(rf"^{_V4}/statuses/batch/write$"), {}, "_write_statuses"),
    _Route(
        "POST",
        re.compile(rf"^{_V4}/statuses/batch/unsubscribe-all$"),
        {"channel": _is_email_channel, **_BUSINESS_UNIT, "verbose": _is_bool},
        "_unsubscribe_all",
    ),
    _Route(
        "POST",
        re.compile(rf"^{_V4}/statuses/batch/unsubscribe-all/read$"),
        {"channel": _is_email_channel, **_BUSINESS_UNIT},
        "_read_unsubscribe_all",
    ),
)


REQUIRED_QUERY: dict[str, tuple[str, ...]] = {
    "_read_statuses": ("channel",),
    "_unsubscribe_all": ("channel",),
    "_read_unsubscribe_all": ("channel",),
}


RATE_LIMIT_HEADERS = (
    "X-HubSpot-RateLimit-Max",
    "X-HubSpot-RateLimit-Remaining",
    "X-HubSpot-RateLimit-Interval-Milliseconds",
    "X-HubSpot-RateLimit-Daily",
    "X-HubSpot-RateLimit-Daily-Remaining",
)
