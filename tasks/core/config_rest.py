"""``kind: rest``: a declarative REST source, so adding an API is YAML, not code.

A REST source says where the records are (``base_url``, ``path``, ``method``, ``params``,
``body``), where in the reply they sit (``records_path``), how to turn the next page
(``paginator``), how to sign in (``auth``), how to pull only what changed (``incremental``) and how
fast it may go (``budget``, ``retry``). ``{since}`` in any parameter, body value or path is replaced
by the incremental watermark (minus the overlap) in the configured format.

Presets (``preset: hubspot_contacts`` ...) expand into a full REST config from a few options;
keys the user writes next to the preset override the expansion (mappings are merged, everything
else is replaced). See :data:`PRESETS`.

It builds on ``SourceBase`` and ``SecretRef`` (:mod:`tasks.core.config_base`);
:mod:`tasks.core.config` puts :class:`RestSource` in the ``Source`` union.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from tasks.core.config_base import Model, SecretRef, SourceBase
from tasks.core.transport import SALESFORCE_DOMAINS, TransportOptions, check_domain_entries

SINCE = "{since}"

# --- auth -----------------------------------------------------------------------------------


class RestBearerAuth(Model):
    """``Authorization: Bearer <token>`` with a static token (Stripe secret key, private app)."""

    type: Literal["bearer"]
    token: SecretRef


class RestApiKeyAuth(Model):
    """A static key in a header (``X-Shopify-Access-Token``, ``api-key``) or a query parameter."""

    type: Literal["api_key"]
    key: SecretRef
    name: str = Field(description="Header or query parameter that carries the key.")
    location: Literal["header", "query"] = "header"
    prefix: str = Field(default="", description="Text before the key, e.g. 'Token '.")


class RestBasicAuth(Model):
    """HTTP basic authentication."""

    type: Literal["basic"]
    username: str
    password: SecretRef


class _OAuth2Common(Model):
    token_url: str = Field(description="Absolute URL, or a path relative to the source base_url.")
    client_id: str
    scope: str | None = None
    refresh_margin_seconds: float = Field(
        default=60, ge=0, description="Refresh this long before the token expires."
    )
    client_auth: Literal["basic", "body"] = Field(
        default="basic", description="Send client id/secret as HTTP Basic or in the form body."
    )
    header: str = Field(default="Authorization", description="Header that carries the token.")
    prefix: str = Field(default="Bearer ", description="Text before the token in that header.")
    instance_url_field: str | None = Field(
        default=None,
        description="Token-reply field holding the API host to use (Salesforce: instance_url).",
    )
    instance_url_domains: tuple[str, ...] = Field(
        default=SALESFORCE_DOMAINS,
        description="Hosts the instance URL may name: 'example.com' (and its subdomains) or "
        "'host:port'. It must also be https (http only to loopback while base_url is loopback, "
        "or with allow_insecure_http). The base_url and token_url origins are always allowed. "
        "Default: Salesforce's domains.",
    )

    @field_validator("instance_url_domains")
    @classmethod
    def _domains_are_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = check_domain_entries(value)
        if bad:
            raise ValueError(f"not a host, .suffix or host:port (lower case): {bad}")
        return value


class RestOAuth2ClientCredentials(_OAuth2Common):
    """OAuth2 client credentials (RFC 6749 §4.4); cached until shortly before expiry."""

    type: Literal["oauth2_client_credentials"]
    client_secret: SecretRef


# Token stores that outlive the process. `env` and `memory` forget a rotated token at exit.
DURABLE_TOKEN_STORES = frozenset({"prefect_secret"})


class TokenStoreRef(Model):
    """Where a rotated refresh token is persisted between runs (never a file in the repo)."""

    kind: Literal["prefect_secret", "env", "memory"] = Field(
        description="prefect_secret: a Prefect Secret block (production); env / memory: this "
        "process only (tests, one-off runs; needs process_only: true)."
    )
    name: str = Field(description="Block name, environment variable or key.")
    process_only: bool = Field(
        default=False,
        description="Acknowledge that an env/memory store forgets a rotated refresh token when "
        "the process exits (the next run then sends a revoked token): for tests, or a provider "
        "that never rotates refresh tokens.",
    )

    @model_validator(mode="after")
    def _durable_unless_acknowledged(self) -> TokenStoreRef:
        if self.kind not in DURABLE_TOKEN_STORES and not self.process_only:
            raise ValueError(
                f"kind {self.kind!r} keeps a rotated refresh token only in this "
                "process, so the next run would present a revoked token (invalid_grant) and be "
                f"locked out; use one of {sorted(DURABLE_TOKEN_STORES)}, or set "
                "process_only: true for tests or a provider that never rotates refresh tokens"
            )
        return self


class RestOAuth2RefreshToken(_OAuth2Common):
    """OAuth2 refresh-token grant; a rotated refresh token is saved to ``token_store``."""

    type: Literal["oauth2_refresh_token"]
    client_secret: SecretRef | None = None
    refresh_token: SecretRef = Field(
        description="The first refresh token; the store's copy wins once it holds one."
    )
    token_store: TokenStoreRef | None = Field(
        default=None,
        description="Where the rotated refresh token is kept between runs; required (Shopify "
        "rotates on every refresh, Salesforce and others can): kind prefect_secret, or an "
        "env/memory store with process_only: true.",
    )

    @model_validator(mode="after")
    def _token_store_required(self) -> RestOAuth2RefreshToken:
        if self.token_store is None:
            raise ValueError(
                "token_store: required for oauth2_refresh_token: a provider that rotates refresh "
                "tokens revokes the old one on every refresh, and a token kept only in memory is "
                "lost when the run ends; e.g. token_store: {kind: prefect_secret, name: "
                "my-source-refresh-token}"
            )
        return self


RestAuth = Annotated[
    RestBearerAuth
    | RestApiKeyAuth
    | RestBasicAuth
    | RestOAuth2ClientCredentials
    | RestOAuth2RefreshToken,
    Field(discriminator="type"),
]

# --- paginators -----------------------------------------------------------------------------

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

# --- incremental, budget, retries, records --------------------------------------------------


CursorOrder = Literal["ascending", "descending", "unordered"]


class Incremental(Model):
    """Pull only what changed since the watermark (max cursor committed in bronze)."""

    cursor_field: str = Field(description="Record column holding the change time.")
    param: str | None = Field(
        default=None, description="Parameter set to the since value (or use {since} anywhere)."
    )
    location: Location = "query"
    format: Literal["iso", "epoch_ms", "epoch_s"] = Field(
        default="iso", description="How {since} is written into the request."
    )
    overlap_seconds: float = Field(
        default=0, ge=0, description="Re-read window before the watermark; the merge absorbs it."
    )
    start: str = Field(
        default="1970-01-01T00:00:00Z",
        description="Since value of the first run (ISO time or epoch seconds/milliseconds).",
    )
    order: CursorOrder = Field(
        default="ascending",
        description="Order of the listing by cursor across pages. Only an ascending listing is "
        "committed batch by batch. A descending (Stripe) or unordered listing (an endpoint that "
        "takes no sort parameter) is held until the pull is complete and then committed in "
        "ascending cursor order, so a run stopped part-way can never advance the watermark "
        "(the max cursor in bronze) past a record it has not read.",
    )


class Budget(Model):
    """Proactive client-side pacing, to stay under the documented limit."""

    requests_per_second: float | None = Field(default=None, gt=0)
    max_concurrency: int = Field(default=1, ge=1, le=64)


class Retry(Model):
    """Backoff for transient failures (defaults: docs/platforms.md, *Retries*)."""

    max_attempts: int = Field(default=6, ge=1, le=20)
    base_seconds: float = Field(default=0.5, ge=0)
    cap_seconds: float = Field(default=30, ge=0)
    deadline_seconds: float = Field(default=120, gt=0)
    max_server_wait_seconds: float = Field(
        default=300, ge=0, description="A longer Retry-After parks the run instead of sleeping."
    )


class Flatten(Model):
    """How a JSON record becomes one row of string columns."""

    lift: list[str] = Field(
        default_factory=list,
        description="Dotted paths of nested objects whose keys become columns (HubSpot "
        "'properties'); a top-level key of the same name wins.",
    )
    exclude: list[str] = Field(
        default_factory=list, description="Top-level keys to leave out (Salesforce 'attributes')."
    )


PresetName = Literal["hubspot_contacts", "salesforce_soql", "shopify_customers", "stripe_customers"]


class RestSource(SourceBase, TransportOptions):
    """A REST API read page by page into ``bronze/<source>`` (all columns as strings)."""

    kind: Literal["rest"]
    preset: PresetName | None = Field(default=None, description="Expand a known API's config.")
    options: dict[str, Any] = Field(default_factory=dict, description="The preset's options.")
    base_url: str
    path: str = Field(default="", description="Endpoint path relative to base_url.")
    method: Literal["GET", "POST"] = "GET"
    params: dict[str, str | int | float | bool | list[str]] = Field(default_factory=dict)
    body: dict[str, Any] | None = Field(default=None, description="JSON body template (POST).")
    headers: dict[str, str] = Field(default_factory=dict)
    auth: RestAuth | None = None
    records_path: str = Field(
        default="", description="Dotted path of the record list in the reply ('' = the reply)."
    )
    primary_key: str = "id"
    columns: list[str] | None = Field(
        default=None, description="Columns to keep, in order; default: every key seen."
    )
    flatten: Flatten = Field(default_factory=Flatten)
    paginator: Paginator = Field(default_factory=lambda: SinglePage(type="single"))
    incremental: Incremental | None = None
    budget: Budget = Field(default_factory=Budget)
    retry: Retry = Field(default_factory=Retry)
    idempotent: bool | None = Field(
        default=None,
        description="May a request be resent after a read timeout? Default: GET yes, POST no "
        "(set true for read-only POSTs such as a search).",
    )
    rows_per_batch: int = Field(default=5_000, ge=1)
    timeout_seconds: float = Field(default=30, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("preset") is None:
            return data
        name = data["preset"]
        preset = PRESETS.get(name)
        if preset is None:
            raise ValueError(f"preset: unknown preset {name!r}; known: {sorted(PRESETS)}")
        try:
            options = preset.options.model_validate(data.get("options") or {})
        except ValidationError as exc:
            problems = "; ".join(
                f"options.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"preset {name!r}: {problems}") from exc
        return deep_merge(preset.expand(options, data), data)

    @model_validator(mode="after")
    def _since_is_used(self) -> RestSource:
        templated = SINCE in repr((self.path, self.params, self.body))
        if self.incremental is None and templated:
            raise ValueError("{since} is used but 'incremental' is not configured")
        if self.incremental is not None and self.incremental.param is None and not templated:
            raise ValueError(
                "incremental: set 'param' or put {since} in path, params or body, "
                "otherwise every run re-reads everything"
            )
        if isinstance(self.paginator, SearchKeysetPaginator) and (
            self.method != "POST" or self.body is None
        ):
            raise ValueError("paginator search_keyset: needs method POST and a search 'body'")
        if self.columns is not None and self.primary_key not in self.columns:
            raise ValueError(f"columns must include the primary key {self.primary_key!r}")
        return self

    @property
    def cursor_field(self) -> str | None:
        return None if self.incremental is None else self.incremental.cursor_field

    def credential_urls(self) -> Iterator[tuple[str, str]]:
        yield "base_url", self.base_url
        if isinstance(self.auth, _OAuth2Common) and "://" in self.auth.token_url:
            yield "auth.token_url", self.auth.token_url


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` applied: mappings merge recursively, anything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --- presets --------------------------------------------------------------------------------


class _Options(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}


class HubSpotContactsOptions(_Options):
    properties: list[str] = Field(min_length=1, description="Contact properties to extract.")
    page_size: int = Field(default=100, ge=1, le=200)
    overlap_seconds: float = Field(default=300, ge=0)
    requests_per_second: float = Field(default=4, gt=0, description="Search API: 4 per second.")


class SalesforceSoqlOptions(_Options):
    object: str = Field(default="Contact", pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    fields: list[str] = Field(min_length=1, description="SOQL field names (Id is always read).")
    api_version: str = Field(default="v66.0", pattern=r"^v\d+\.\d$")
    where: str | None = Field(default=None, description="Extra SOQL condition, ANDed.")
    batch_size: int = Field(default=2000, ge=200, le=2000)
    overlap_seconds: float = Field(default=60, ge=0)
    requests_per_second: float = Field(default=10, gt=0)


class ShopifyCustomersOptions(_Options):
    api_version: str = Field(default="2024-10", pattern=r"^\d{4}-\d{2}$")
    page_size: int = Field(default=250, ge=1, le=250)
    overlap_seconds: float = Field(default=60, ge=0)
    requests_per_second: float = Field(default=2, gt=0, description="Standard plan leak rate.")


class StripeCustomersOptions(_Options):
    page_size: int = Field(default=100, ge=1, le=100, description="Stripe rejects limit > 100.")
    stripe_version: str = "2024-06-20"
    overlap_seconds: float = Field(default=0, ge=0)
    requests_per_second: float = Field(default=25, gt=0, description="Sandbox limit.")


def _oauth_defaults(data: Mapping[str, Any], **defaults: Any) -> dict[str, Any]:
    """Preset defaults for an OAuth2 ``auth`` block, only when the user chose an OAuth2 grant."""
    auth = data.get("auth")
    if isinstance(auth, Mapping) and str(auth.get("type", "")).startswith("oauth2_"):
        return {"auth": defaults}
    return {}


def _hubspot_contacts(options: Any, data: Mapping[str, Any]) -> dict[str, Any]:
    del data
    cursor = "lastmodifieddate"
    properties = list(dict.fromkeys([*options.properties, cursor]))
    return {
        "base_url": "https://api.hubapi.com",
        "path": "/crm/v3/objects/contacts/search",
        "method": "POST",
        "idempotent": True,  # search is a read, safe to resend
        "body": {
            "filterGroups": [
                {"filters": [{"propertyName": cursor, "operator": "GTE", "value": SINCE}]}
            ],
            "sorts": [{"propertyName": cursor, "direction": "ASCENDING"}],
            "properties": properties,
            "limit": options.page_size,
            # Every query of the keyset asks for its first page: HubSpot's search schema lists
            # 'after' as required, and the keyset never sends another offset.
            "after": "0",
        },
        "records_path": "results",
        "primary_key": "id",
        "flatten": {"lift": ["properties"]},
        "columns": ["id", *properties],
        # Keyset, not the 'after' offset: the offset points into a result set that re-sorts
        # itself whenever a contact is modified mid-run (see SearchKeysetPaginator).
        "paginator": {
            "type": "search_keyset",
            "cursor_property": cursor,
            "cursor_path": f"properties.{cursor}",
            "tie_property": "hs_object_id",
            "tie_path": "id",
        },
        "incremental": {
            "cursor_field": cursor,
            "format": "epoch_ms",
            "overlap_seconds": options.overlap_seconds,
            "start": "0",
        },
        "budget": {"requests_per_second": options.requests_per_second},
    }


def _salesforce_soql(options: Any, data: Mapping[str, Any]) -> dict[str, Any]:
    cursor = "SystemModstamp"
    fields = list(dict.fromkeys(["Id", *options.fields, cursor]))
    where = f"{cursor} > {SINCE}"
    if options.where:
        where = f"({options.where}) AND {where}"
    soql = f"SELECT {', '.join(fields)} FROM {options.object} WHERE {where} ORDER BY {cursor} ASC"
    return {
        "path": f"/services/data/{options.api_version}/query",
        "params": {"q": soql},
        "headers": {"Sforce-Query-Options": f"batchSize={options.batch_size}"},
        "records_path": "records",
        "primary_key": "Id",
        "flatten": {"exclude": ["attributes"]},
        "columns": fields,
        "paginator": {"type": "next_url", "next_url_path": "nextRecordsUrl", "done_path": "done"},
        "incremental": {
            "cursor_field": cursor,
            "format": "iso",
            "overlap_seconds": options.overlap_seconds,
        },
        "budget": {"requests_per_second": options.requests_per_second},
        **_oauth_defaults(data, instance_url_field="instance_url"),
    }


def _shopify_customers(options: Any, data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        # customers.json takes no sort parameter: filtered by updated_at_min its pages come in
        # id order, and committing them batch by batch lifts the watermark over unread rows.
        # customers/search.json sorts by updated_at and pages by cursor, so a run stopped
        # part-way has committed only rows older than every row it has not read.
        "path": f"/admin/api/{options.api_version}/customers/search.json",
        "params": {
            "limit": options.page_size,
            "order": "updated_at asc",
            "query": f"updated_at:>='{SINCE}'",
        },
        "records_path": "customers",
        "primary_key": "id",
        "paginator": {"type": "link_header"},
        "incremental": {
            "cursor_field": "updated_at",
            "format": "iso",
            "overlap_seconds": options.overlap_seconds,
        },
        "budget": {"requests_per_second": options.requests_per_second},
        **_oauth_defaults(data, header="X-Shopify-Access-Token", prefix=""),
    }


def _stripe_customers(options: Any, data: Mapping[str, Any]) -> dict[str, Any]:
    del data
    return {
        "base_url": "https://api.stripe.com",
        "path": "/v1/customers",
        "params": {"limit": options.page_size},
        "headers": {"Stripe-Version": options.stripe_version},
        "records_path": "data",
        "primary_key": "id",
        "paginator": {"type": "starting_after", "has_more_path": "has_more"},
        "incremental": {
            "cursor_field": "created",
            "param": "created[gte]",
            "format": "epoch_s",
            "overlap_seconds": options.overlap_seconds,
            "start": "0",
            "order": "descending",  # Stripe lists newest first
        },
        "budget": {"requests_per_second": options.requests_per_second},
    }


class Preset:
    """A known API: an options model and a function expanding options into REST config keys."""

    def __init__(
        self, options: type[BaseModel], expand: Callable[[Any, Mapping[str, Any]], dict[str, Any]]
    ) -> None:
        self.options = options
        self.expand = expand


PRESETS: dict[str, Preset] = {
    "hubspot_contacts": Preset(HubSpotContactsOptions, _hubspot_contacts),
    "salesforce_soql": Preset(SalesforceSoqlOptions, _salesforce_soql),
    "shopify_customers": Preset(ShopifyCustomersOptions, _shopify_customers),
    "stripe_customers": Preset(StripeCustomersOptions, _stripe_customers),
}

# Tags of the discriminated unions above, dropped from error paths by tasks.core.config.
UNION_TAGS: frozenset[str] = frozenset(
    {
        "rest",
        "bearer",
        "api_key",
        "basic",
        "oauth2_client_credentials",
        "oauth2_refresh_token",
        "single",
        "json_cursor",
        "search_keyset",
        "next_url",
        "link_header",
        "offset",
        "page_number",
        "starting_after",
    }
)
