"""``kind: rest`` in pipeline.yaml: presets expand, user keys override, mistakes fail at load
with the key path."""

from __future__ import annotations

import textwrap

import pytest

from tasks.core.config import parse_pipeline
from tasks.core.config_rest import RestSource
from tasks.core.config_rest_auth import RestApiKeyAuth, RestOAuth2RefreshToken
from tasks.core.config_rest_paging import (
    LinkHeaderPaginator,
    NextUrlPaginator,
    SearchKeysetPaginator,
    StartingAfterPaginator,
)
from tasks.core.config_rest_presets import PRESETS, deep_merge
from tasks.errors import ConfigError

HEAD = """\
version: 1
sources:
  src:
    kind: rest
    role: contacts
"""


def load(body: str) -> RestSource:
    source = parse_pipeline(HEAD + textwrap.indent(textwrap.dedent(body), "    "), env={})
    rest = source.sources["src"]
    assert isinstance(rest, RestSource)
    return rest


def fails(body: str, *fragments: str) -> str:
    with pytest.raises(ConfigError) as failure:
        load(body)
    message = str(failure.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_hubspot_preset_expands_and_user_keys_override() -> None:
    source = load(
        """\
        preset: hubspot_contacts
        auth: {type: bearer, token: {secret: hubspot_token}}
        options: {properties: [email, firstname], page_size: 200}
        budget: {requests_per_second: 3}
        paginator: {max_pages: 50}
        """
    )
    assert source.base_url == "https://api.hubapi.com"
    assert source.method == "POST" and source.idempotent is True
    assert source.columns == ["id", "email", "firstname", "lastmodifieddate"]
    assert isinstance(source.paginator, SearchKeysetPaginator)
    assert source.paginator.cursor_property == "lastmodifieddate"
    assert source.paginator.max_pages == 50  # merged into the preset's paginator
    assert source.budget.requests_per_second == 3  # the user's value wins
    assert source.incremental is not None and source.incremental.format == "epoch_ms"
    assert source.cursor_field == "lastmodifieddate"
    assert source.body is not None and source.body["limit"] == 200


def test_salesforce_preset_builds_soql_and_uses_the_instance_url() -> None:
    source = load(
        """\
        preset: salesforce_soql
        base_url: https://acme.my.salesforce.com
        auth: {type: oauth2_client_credentials, token_url: /services/oauth2/token,
               client_id: cid, client_secret: {secret: sf}}
        options: {fields: [Email, LastName], where: "IsDeleted = false"}
        """
    )
    assert source.params["q"] == (
        "SELECT Id, Email, LastName, SystemModstamp FROM Contact WHERE (IsDeleted = false) "
        "AND SystemModstamp > {since} ORDER BY SystemModstamp ASC"
    )
    assert isinstance(source.paginator, NextUrlPaginator)
    assert source.auth is not None and source.auth.instance_url_field == "instance_url"
    assert source.flatten.exclude == ["attributes"] and source.primary_key == "Id"


def test_shopify_preset_puts_oauth_tokens_in_the_shopify_header() -> None:
    source = load(
        """\
        preset: shopify_customers
        base_url: https://acme.myshopify.com
        auth: {type: oauth2_refresh_token, token_url: /admin/oauth/access_token,
               client_id: cid, refresh_token: {secret: rt},
               token_store: {kind: prefect_secret, name: acme-refresh-token}}
        """
    )
    assert isinstance(source.auth, RestOAuth2RefreshToken)
    assert (source.auth.header, source.auth.prefix) == ("X-Shopify-Access-Token", "")
    assert source.auth.token_store is not None and source.auth.token_store.kind == "prefect_secret"
    assert isinstance(source.paginator, LinkHeaderPaginator)
    # The ordered endpoint: customers.json has no sort parameter (see the preset).
    assert source.path.endswith("/customers/search.json")
    assert source.params["order"] == "updated_at asc"
    assert source.params["query"] == "updated_at:>='{since}'"
    assert source.incremental is not None and source.incremental.order == "ascending"
    static = load(
        """\
        preset: shopify_customers
        base_url: https://acme.myshopify.com
        auth: {type: api_key, name: X-Shopify-Access-Token, key: {secret: token}}
        """
    )
    assert isinstance(static.auth, RestApiKeyAuth)


def test_stripe_preset_is_newest_first_and_capped_at_100() -> None:
    source = load(
        """\
        preset: stripe_customers
        auth: {type: bearer, token: {secret: stripe}}
        """
    )
    assert isinstance(source.paginator, StartingAfterPaginator)
    assert source.incremental is not None and source.incremental.order == "descending"
    assert source.params["limit"] == 100
    fails(
        """\
        preset: stripe_customers
        auth: {type: bearer, token: {secret: stripe}}
        options: {page_size: 101}
        """,
        "sources.src: preset 'stripe_customers': options.page_size",
        "100",
    )


def test_preset_options_are_validated() -> None:
    fails(
        """\
        preset: hubspot_contacts
        auth: {type: bearer, token: {secret: t}}
        """,
        "options.properties: Field required",
    )
    fails(
        """\
        preset: hubspot_contacts
        auth: {type: bearer, token: {secret: t}}
        options: {properties: [email], colour: blue}
        """,
        "options.colour: Extra inputs are not permitted",
    )
    fails("preset: zendesk_tickets\nbase_url: https://x\n", "sources.src: preset: unknown preset")


def test_mistakes_fail_at_load_naming_the_key() -> None:
    fails("base_url: https://x\npaginator: {type: scroll}\n", "sources.src.paginator")
    fails(
        "base_url: https://x\nparams: {since: '{since}'}\n",
        "{since} is used but 'incremental' is not configured",
    )
    fails(
        "base_url: https://x\nincremental: {cursor_field: updated_at}\n",
        "incremental: set 'param' or put {since}",
    )
    fails(
        "base_url: https://x\npaginator: {type: search_keyset, cursor_property: t, "
        "cursor_path: t}\n",
        "search_keyset: needs method POST and a search 'body'",
    )
    fails("base_url: https://x\ncolumns: [email]\n", "columns must include the primary key 'id'")
    fails(
        "base_url: https://x\nauth: {type: bearer, token: plain-text}\n", "sources.src.auth.token"
    )
    fails("base_url: https://x\nbudget: {requests_per_second: 0}\n", "budget.requests_per_second")
    fails("base_url: https://x\nretries: 3\n", "sources.src.retries: Extra inputs")


def test_every_preset_expands_to_a_valid_source() -> None:
    options = {
        "hubspot_contacts": "{properties: [email]}",
        "salesforce_soql": "{fields: [Email]}",
        "shopify_customers": "{}",
        "stripe_customers": "{}",
    }
    assert set(options) == set(PRESETS)
    for name, opts in options.items():
        source = load(
            f"preset: {name}\nbase_url: https://x\n"
            f"auth: {{type: bearer, token: {{secret: t}}}}\noptions: {opts}\n"
        )
        assert source.cursor_field is not None
        assert source.budget.requests_per_second is not None  # documented limits by default


def test_deep_merge_merges_mappings_and_replaces_the_rest() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert deep_merge(base, {"a": {"c": [3]}, "e": 2}) == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}  # not mutated
