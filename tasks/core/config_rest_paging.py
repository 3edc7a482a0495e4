"""The ``paginator`` block of a ``kind: rest`` source: how the next page is turned.

One model per pagination style the connectors implement (a single page, a cursor in the reply,
a keyset search, a next URL, a Link header, offset, page number, Stripe's ``starting_after``);
:data:`Paginator` is their discriminated union, used by :class:`tasks.core.config_rest.RestSource`;
:mod:`tasks.connectors.sources.paginators` runs them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tasks.core.config_base import Model

Location = Literal["query", "body"]


class _Paginator(Model):
    max_pages: int = Field(default=100_000, ge=1, description="Safety bound per run.")


class SinglePage(_Paginator):
    """The endpoint returns everything in one reply."""

    type: Literal["single"]


class JsonCursorPaginator(_Paginator):
    """A cursor in the reply body (``paging.next.after``) sent back as a parameter.

    Safe only where the cursor is opaque and stable (HubSpot's list endpoint). A cursor that is
    an offset into a result set sorted by something that changes while the run reads (HubSpot
    search sorted by ``lastmodifieddate``) skips records: use ``search_keyset`` there.
    """

    type: Literal["json_cursor"]
    cursor_path: str = Field(description="Dotted path of the next cursor in the reply.")
    param: str = Field(description="Parameter (query or body key) that carries the cursor.")
    location: Location = "query"


class SearchKeysetPaginator(_Paginator):
    """A CRM search (HubSpot ``filterGroups``/``sorts``/``limit``) paged by keyset, never by offset.

    Each page is a fresh first-page query ``cursor_property >= last value seen`` sorted by
    ``cursor_property``; a record modified mid-run moves to the end of the order and is read
    there, and no offset can shift under the reader. The search API sorts by one property
    only, so when a whole page shares one cursor value the reader drains that value by a
    second keyset (``cursor_property == value AND tie_property > last seen``, sorted by
    ``tie_property``) and then continues with ``cursor_property > value``. Rows at a page
    boundary are read twice; the merge on the primary key absorbs them. No query ever pages
    past its first page, so the 10,000-result window of a search never applies.
    """

    type: Literal["search_keyset"]
    cursor_property: str = Field(description="Search property of the change time (filter, sort).")
    cursor_path: str = Field(description="Dotted path of that value in a record.")
    tie_property: str = Field(
        default="hs_object_id", description="Unique numeric property breaking cursor ties."
    )
    tie_path: str = Field(default="id", description="Dotted path of that value in a record.")
    more_path: str = Field(
        default="paging.next.after", description="Dotted path present while more results remain."
    )


class NextUrlPaginator(_Paginator):
    """A next-page URL in the body (Salesforce ``nextRecordsUrl`` until ``done``)."""

    type: Literal["next_url"]
    next_url_path: str = Field(description="Dotted path of the next URL (absolute or a path).")
    done_path: str | None = Field(default=None, description="Dotted path of a 'last page' flag.")


class LinkHeaderPaginator(_Paginator):
    """RFC 8288 ``Link: <url>; rel="next"`` (Shopify REST, GitHub); the URL is used as given."""

    type: Literal["link_header"]
    rel: str = "next"


class OffsetPaginator(_Paginator):
    """``offset``/``limit``; stops at ``total``, on ``has_more: false`` or on a short page.

    An offset points into the result set as it is sorted at each request: over a listing sorted
    by a change time, a record modified mid-run moves and every later offset shifts, so a record
    is skipped. Use it for listings whose order does not change while read (by id, by creation).
    """

    type: Literal["offset"]
    offset_param: str = "offset"
    limit_param: str = "limit"
    limit: int = Field(ge=1)
    location: Location = "query"
    total_path: str | None = None
    has_more_path: str | None = None


class PageNumberPaginator(_Paginator):
    """``page=1,2,...``; stops at ``total_pages``, on an empty page or a short page.

    A page number is an offset: see :class:`OffsetPaginator` for the listings it suits.
    """

    type: Literal["page_number"]
    page_param: str = "page"
    start: int = Field(default=1, ge=0)
    size_param: str | None = "per_page"
    size: int | None = Field(default=None, ge=1)
    location: Location = "query"
    total_pages_path: str | None = None


class StartingAfterPaginator(_Paginator):
    """Stripe style: ``starting_after=<last id>`` while ``has_more`` is true."""

    type: Literal["starting_after"]
    param: str = "starting_after"
    id_field: str = Field(default="id", description="Record field whose last value is sent.")
    has_more_path: str = "has_more"


Paginator = Annotated[
    SinglePage
    | JsonCursorPaginator
    | SearchKeysetPaginator
    | NextUrlPaginator
    | LinkHeaderPaginator
    | OffsetPaginator
    | PageNumberPaginator
    | StartingAfterPaginator,
    Field(discriminator="type"),
]
