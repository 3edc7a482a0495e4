"""Lists and list membership: ``GET /api/lists`` and
``/api/lists/{id}/relationships/profiles`` reads and writes.
"""

from __future__ import annotations

from infra.sandbox._http import Request, Response, empty_response
from infra.sandbox.klaviyo.parsing import KlaviyoParsing
from infra.sandbox.klaviyo.wire import (
    LIST_FILTERS,
    LIST_WRITE_MAX,
    LISTS_PAGE_MAX,
    MEMBER_FILTERS,
    PAGE_MAX,
    _invalid,
    _now,
)


class ListRoutes(KlaviyoParsing):
    """Lists and their members."""

    def _get_lists(self, request: Request) -> Response:
        values = self._query(
            request,
            {
                "fields[flow]",
                "fields[list]",
                "fields[tag]",
                "filter",
                "include",
                "page[cursor]",
                "page[size]",
                "sort",
            },
        )
        self._csv(values, "include", {"flow-triggers", "tags"})
        self._csv(values, "fields[list]", {"created", "id", "name", "opt_in_process", "updated"})
        size = self._page_size(values, LISTS_PAGE_MAX, LISTS_PAGE_MAX)
        conditions = self._filter(values, LIST_FILTERS)
        sort = values.get("sort", "id")
        if sort.lstrip("-") not in {"created", "id", "name", "updated"}:
            raise _invalid(f"'{sort}' is not a valid sort field.", parameter="sort")
        with self._lock:
            chosen = [
                found
                for found in self._lists.values()
                if all(
                    c.test(
                        {
                            "id": found.id,
                            "name": found.name,
                            "created": found.created,
                            "updated": found.updated,
                        }[c.name]
                    )
                    for c in conditions
                )
            ]
            chosen.sort(key=lambda f: getattr(f, sort.lstrip("-")), reverse=sort[0] == "-")
            base = self._base(request)
            return self._page(
                request, [self._list_wire(f, base) for f in chosen], size, values, "lists"
            )

    def _get_members(self, request: Request, list_id: str) -> Response:
        values = self._query(request, {"filter", "page[cursor]", "page[size]", "sort"})
        size = self._page_size(values, 20, PAGE_MAX)
        conditions = self._filter(values, MEMBER_FILTERS)
        sort = values.get("sort", "joined_group_at")
        if sort.lstrip("-") != "joined_group_at":
            raise _invalid(f"'{sort}' is not a valid sort field.", parameter="sort")
        with self._lock:
            found = self._list(list_id)
            rows = []
            for pid, joined in sorted(
                found.members.items(), key=lambda item: item[1], reverse=sort[0] == "-"
            ):
                profile = self._profiles.get(pid)
                if profile is None:
                    continue
                facts = {
                    "email": profile.email,
                    "phone_number": profile.attributes.get("phone_number"),
                    "push_token": None,
                    "_kx": None,
                    "joined_group_at": joined,
                }
                if all(c.test(facts[c.name]) for c in conditions):
                    rows.append({"type": "profile", "id": pid})
            return self._page(request, rows, size, values, f"members:{list_id}")

    def _change_members(self, request: Request, list_id: str, *, add: bool) -> Response:
        self._query(request, ())
        body = self._body(request)
        items = body.get("data") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise _invalid("'data' must be a non-empty array of profiles.", pointer="/data")
        if len(items) > LIST_WRITE_MAX:
            raise _invalid(
                f"At most {LIST_WRITE_MAX} profiles per call; got {len(items)}.", pointer="/data"
            )
        with self._lock:
            found = self._list(list_id)
            ids: list[str] = []
            for index, item in enumerate(items):
                if not isinstance(item, dict) or item.get("type") != "profile":
                    raise _invalid("Each item is {type: 'profile', id}.", pointer=f"/data/{index}")
                pid = item.get("id")
                if pid not in self._profiles:
                    raise _invalid(f"Profile {pid!r} does not exist.", pointer=f"/data/{index}/id")
                ids.append(str(pid))
            for pid in ids:
                if add:
                    found.members.setdefault(pid, _now())
                else:
                    found.members.pop(pid, None)
            found.updated = _now()
        return empty_response()
