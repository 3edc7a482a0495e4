"""Presets of a ``kind: rest`` source: a known API's full REST config from a few options.

``preset: hubspot_contacts`` (and the others in :data:`PRESETS`) expands into the keys of a REST
config; keys the user writes next to the preset override the expansion (:func:`deep_merge`:
mappings are merged, everything else is replaced). ``{since}`` (:data:`SINCE`) in any parameter,
body value or path is replaced by the incremental watermark at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

SINCE = "{since}"

PresetName = Literal["hubspot_contacts", "salesforce_soql", "shopify_customers", "stripe_customers"]


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` applied: mappings merge recursively, anything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


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
