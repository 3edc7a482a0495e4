"""Transport rules for credential-carrying URLs (pure) and their enforcement at config load:
https or loopback unless ``allow_insecure_http``, instance-URL pinning, ``ca_bundle`` fields."""

from __future__ import annotations

import textwrap

import pytest

from tasks.core.config import parse_pipeline
from tasks.core.config_rest import RestSource
from tasks.core.transport import (
    SALESFORCE_DOMAINS,
    display_url,
    host_in_domains,
    insecure_http_problem,
    instance_url_problem,
    is_loopback_host,
)
from tasks.errors import ConfigError


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.8.7", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("::1", True),
        ("[::1]", True),
        ("10.0.0.1", False),
        ("128.0.0.1", False),
        ("localhost.example.com", False),
        ("api.example.com", False),
        ("", False),
    ],
)
def test_loopback_is_127_slash_8_ipv6_one_and_localhost(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("url", "allowed", "refused"),
    [
        ("https://api.example.com/v1", True, True),
        ("http://127.0.0.1:8711", True, True),
        ("http://localhost/x", True, True),
        ("http://[::1]:9/x", True, True),
        ("/relative/path", True, True),
        ("http://api.example.com", True, False),
        ("http://user:pw@10.1.2.3:8080/x", True, False),
        ("ftp://files.example.com", False, False),
    ],
)
def test_plain_http_only_to_loopback_unless_allowed(url: str, allowed: bool, refused: bool) -> None:
    assert (insecure_http_problem(url, allow_insecure_http=True) is None) is allowed
    assert (insecure_http_problem(url, allow_insecure_http=False) is None) is refused


def test_display_url_drops_user_info_query_and_fragment() -> None:
    shown = display_url("http://user:pw@api.example.com:8080/v1/x?hapikey=k#f")
    assert shown == "http://api.example.com:8080/v1/x"


def test_domains_match_the_host_and_its_subdomains_not_lookalikes() -> None:
    assert host_in_domains("acme.my.salesforce.com", 443, SALESFORCE_DOMAINS)
    assert host_in_domains("salesforce.com", 443, [".salesforce.com"])
    assert not host_in_domains("salesforce.com.evil.com", 443, SALESFORCE_DOMAINS)
    assert not host_in_domains("evilsalesforce.com", 443, SALESFORCE_DOMAINS)
    assert host_in_domains("127.0.0.1", 8001, ["127.0.0.1:8001"])
    assert not host_in_domains("127.0.0.1", 8002, ["127.0.0.1:8001"])


def _instance(
    url: str, *, base: str = "https://login.salesforce.com", insecure: bool = False
) -> str | None:
    return instance_url_problem(
        url,
        domains=SALESFORCE_DOMAINS,
        trusted_urls=[base],
        allow_insecure_http=insecure,
        base_is_loopback=is_loopback_host(base.split("//")[1].split(":")[0]),
    )


def test_instance_url_must_be_https_on_the_vendor_domain() -> None:
    assert _instance("https://acme.my.salesforce.com") is None
    assert _instance("https://acme.lightning.force.com") is None
    assert _instance("http://acme.my.salesforce.com") == "is not https"
    assert _instance("https://attacker.example.com") == "is not on an allowed domain"
    assert _instance("https://acme.my.salesforce.com.attacker.example.com") is not None
    assert _instance("javascript:alert(1)") == "is not an absolute http(s) URL"
    # The configured origin itself is trusted; loopback http only while the source is loopback.
    assert _instance("http://127.0.0.1:8001", base="http://127.0.0.1:8001") is None
    assert _instance("http://127.0.0.1:8002", base="http://127.0.0.1:8001") is not None
    assert _instance("http://127.0.0.1:8002") == "is not https"
    assert _instance("http://acme.my.salesforce.com", insecure=True) is None


def rest(body: str) -> RestSource:
    text = "sources:\n  src:\n    kind: rest\n    role: contacts\n" + textwrap.indent(
        textwrap.dedent(body), "    "
    )
    source = parse_pipeline(text, env={}).sources["src"]
    assert isinstance(source, RestSource)
    return source


def pipeline(*, crm: str, mailchimp_url: str = "https://us6.api.mailchimp.com") -> str:
    """A complete, valid pipeline.yaml but for what the test puts into it."""
    head = (
        "sources:\n  crm:\n    kind: rest\n    role: contacts\n"
        "    fields: {source_id: id, email: email, updated_at: updated_at}\n"
    )
    tail = f"""\
segments:
  - {{name: everyone, where: "order_count >= 0"}}
destinations:
  mailchimp:
    kind: mailchimp
    base_url: {mailchimp_url}
    api_key: {{secret: mailchimp_key}}
    audiences: {{everyone: list1}}
"""
    return head + textwrap.indent(textwrap.dedent(crm).rstrip("\n") + "\n", "    ") + tail


def load_error(text: str) -> str:
    with pytest.raises(ConfigError) as failure:
        parse_pipeline(text, env={})
    return str(failure.value)


def test_plain_http_base_url_to_a_remote_host_fails_at_load_naming_the_key() -> None:
    parse_pipeline(pipeline(crm="base_url: https://crm.example.com/api"), env={})  # control
    message = load_error(pipeline(crm='base_url: "http://user:pw@crm.example.com/api"'))
    assert message == (
        "pipeline.yaml: sources.crm: base_url: 'http://crm.example.com/api' is plain http to "
        "the non-loopback host 'crm.example.com': credentials would cross the network "
        "unencrypted; use https, or set allow_insecure_http: true if the network is trusted"
    )
    assert rest("base_url: http://crm.example.com\nallow_insecure_http: true\n").allow_insecure_http
    assert rest("base_url: http://127.0.0.1:8711\n").base_url == "http://127.0.0.1:8711"


OAUTH = """\
auth: {{type: oauth2_client_credentials, token_url: "{token_url}", client_id: c,
       client_secret: {{secret: crm_secret}}}}
"""


def test_plain_http_token_url_fails_at_load_naming_the_key() -> None:
    crm = "base_url: https://crm.example.com\n" + OAUTH
    parse_pipeline(pipeline(crm=crm.format(token_url="https://login.example.com/t")), env={})
    # A relative token URL shares the base URL's scheme and host: nothing more to check.
    parse_pipeline(pipeline(crm=crm.format(token_url="/token")), env={})
    message = load_error(pipeline(crm=crm.format(token_url="http://login.example.com/t")))
    assert message.startswith(
        "pipeline.yaml: sources.crm: auth.token_url: 'http://login.example.com/t' is plain http"
    )


def test_plain_http_destination_fails_at_load_naming_the_key() -> None:
    crm = "base_url: https://crm.example.com\n"
    message = load_error(pipeline(crm=crm, mailchimp_url="http://us6.api.mailchimp.com"))
    assert message.startswith(
        "pipeline.yaml: destinations.mailchimp: base_url: 'http://us6.api.mailchimp.com' is "
        "plain http to the non-loopback host"
    )
    loopback = pipeline(crm=crm, mailchimp_url="http://127.0.0.1:8712")
    assert parse_pipeline(loopback, env={}).destinations["mailchimp"].base_url.startswith("http:")


def test_instance_url_domains_and_ca_bundle_are_validated() -> None:
    source = rest(
        """\
        base_url: https://acme.my.salesforce.com
        ca_bundle: /etc/ssl/corp-ca.pem
        auth: {type: oauth2_client_credentials, token_url: /services/oauth2/token, client_id: c,
               client_secret: {secret: sf}, instance_url_field: instance_url}
        """
    )
    assert source.ca_bundle == "/etc/ssl/corp-ca.pem"
    assert source.auth is not None and source.auth.instance_url_domains == SALESFORCE_DOMAINS
    message = load_error(
        """\
        sources:
          sf:
            kind: rest
            role: enrichment
            base_url: https://acme.my.salesforce.com
            auth: {type: oauth2_client_credentials, token_url: /t, client_id: c,
                   client_secret: {secret: sf}, instance_url_domains: ["https://evil.com/x"]}
        """
    )
    assert "sources.sf.auth.instance_url_domains" in message
    assert "sources.sf.ca_bundle" in load_error(
        """\
        sources:
          sf: {kind: rest, role: enrichment, base_url: "https://x.example.com", ca_bundle: ""}
        """
    )
