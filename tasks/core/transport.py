"""Transport security rules for every outbound HTTP client, as pure checks on URL text.

* **https or loopback.** Credentials travel in headers, query strings and form bodies, so a plain
  ``http://`` URL is accepted only when its host is loopback (``127.0.0.0/8``, ``::1``,
  ``localhost``: the demo and the sandbox stand-ins) or when the owner of the URL sets
  ``allow_insecure_http: true``.
* **Pinned instance URLs.** Some token endpoints (Salesforce) name the API host in their reply
  (``instance_url``); the access token goes there, so the host must be https on one of the
  vendor's domains (or the origin of the configured ``base_url``/``token_url``).
* **Certificate verification is always on**; ``ca_bundle`` only changes *which* CAs are trusted.

The checks return a problem description (or ``None``) and never do IO: config models call them
at load time, the HTTP client factory again for every request it sends.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel, Field, model_validator

# Where Salesforce serves its APIs: My Domain hosts (*.my.salesforce.com), Lightning and sites
# (*.force.com), older instance hosts (*.salesforce.com), Government Cloud Plus on .mil, and the
# legacy cloudforce.com / database.com instance names.
SALESFORCE_DOMAINS: tuple[str, ...] = (
    "salesforce.com",
    "force.com",
    "cloudforce.com",
    "database.com",
    "salesforce.mil",
)

_DOMAIN_ENTRY = re.compile(r"^\.?(?:[a-z0-9-]+\.)*[a-z0-9-]+(?::\d{1,5})?$")


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an IP literal, brackets allowed) is this machine."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# RFC 3986 appendix B, reduced to what the checks need (urllib is off-limits in the pure core).
_URL = re.compile(r"^(?:([A-Za-z][A-Za-z0-9+.\-]*):)?(?://([^/?#]*))?([^?#]*)")


def _split(url: str) -> tuple[str, str, int | None, str]:
    """``(scheme, host, port, path)`` of ``url``; user info, query and fragment dropped."""
    match = _URL.match(url.strip())
    scheme, authority, path = (
        (match.group(1), match.group(2), match.group(3)) if match else ("", "", "")
    )
    hostport = (authority or "").rpartition("@")[2]
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = hostport.partition(":")
    port = int(port_text) if port_text.isdigit() else None
    return (scheme or "").lower(), host.lower(), port, path


def _parts(url: str) -> tuple[str, str, int | None]:
    scheme, host, port, _path = _split(url)
    return scheme, host, port


def insecure_http_problem(url: str, *, allow_insecure_http: bool) -> str | None:
    """Why ``url`` must not carry credentials, or ``None`` when it may.

    Only ``https`` is accepted, or ``http`` to a loopback host, or ``http`` anywhere when the
    owner opted in with ``allow_insecure_http``. Relative URLs (no scheme) are not judged here:
    they inherit the scheme and host of the URL they are resolved against.
    """
    scheme, host, _port = _parts(url)
    if not scheme:
        return None
    if scheme == "https":
        return None if host else "has no host"
    if scheme != "http":
        return f"uses the scheme {scheme!r}; only https (or http to loopback) is allowed"
    if is_loopback_host(host) or allow_insecure_http:
        return None
    return (
        f"is plain http to the non-loopback host {host!r}: credentials would cross the network "
        "unencrypted; use https, or set allow_insecure_http: true if the network is trusted"
    )


def display_url(url: str) -> str:
    """``url`` without user info, query or fragment: safe to put in an error message."""
    scheme, host, port, path = _split(url)
    if not scheme:
        return path
    shown_host = f"[{host}]" if ":" in host else host
    shown_port = f":{port}" if port is not None else ""
    return f"{scheme}://{shown_host}{shown_port}{path}"


def _origin(url: str) -> tuple[str, str, int | None]:
    scheme, host, port = _parts(url)
    return scheme, host, port if port is not None else {"http": 80, "https": 443}.get(scheme)


def host_in_domains(host: str, port: int | None, domains: Iterable[str]) -> bool:
    """Whether ``host[:port]`` is one of ``domains``: ``example.com`` (or ``.example.com``)
    matches the host and its subdomains, ``host:port`` matches that host on that port only."""
    host = host.lower().rstrip(".")
    for entry in domains:
        name, _, entry_port = entry.lower().lstrip(".").partition(":")
        if entry_port and (port is None or int(entry_port) != port):
            continue
        if host == name or host.endswith("." + name):
            return True
    return False


def instance_url_problem(
    url: str,
    *,
    domains: Iterable[str],
    trusted_urls: Iterable[str],
    allow_insecure_http: bool,
    base_is_loopback: bool,
) -> str | None:
    """Why a token reply's instance URL must not receive the access token, or ``None``.

    Accepted: https to a host in ``domains`` or to the origin of one of ``trusted_urls`` (the
    configured base and token URLs). Plain http only to loopback while the source itself is on
    loopback (the sandbox), or when ``allow_insecure_http`` is set.
    """
    scheme, host, port = _origin(url)
    if scheme not in ("http", "https") or not host:
        return "is not an absolute http(s) URL"
    if scheme == "http":
        loopback_ok = is_loopback_host(host) and base_is_loopback
        if not (loopback_ok or allow_insecure_http):
            return "is not https"
    if (scheme, host, port) in {_origin(u) for u in trusted_urls}:
        return None
    if host_in_domains(host, port, domains):
        return None
    return "is not on an allowed domain"


def check_domain_entries(entries: Iterable[str]) -> list[str]:
    """Allow-list entries that are not ``host``, ``.suffix`` or ``host:port`` (lower case)."""
    return [e for e in entries if not _DOMAIN_ENTRY.match(e.lower())]


class TransportOptions(BaseModel):
    """``allow_insecure_http`` and ``ca_bundle`` for a config block that owns an HTTP client.

    A model using it lists its credential-carrying URLs in :meth:`credential_urls`; each is
    checked with :func:`insecure_http_problem` when the config loads.
    """

    allow_insecure_http: bool = Field(
        default=False,
        description="Allow plain http:// to non-loopback hosts (credentials unencrypted on "
        "the wire). Off: such URLs are refused when the config loads and when a request is sent.",
    )
    ca_bundle: str | None = Field(
        default=None,
        min_length=1,
        description="PEM file of CA certificates to trust for this client instead of the "
        "default store. Certificate verification cannot be turned off.",
    )

    def credential_urls(self) -> Iterator[tuple[str, str]]:
        """``(key path, URL)`` of every URL this block sends credentials to (known at load)."""
        return iter(())

    @model_validator(mode="after")
    def _refuse_plain_http(self) -> Any:
        for key, url in self.credential_urls():
            problem = insecure_http_problem(url, allow_insecure_http=self.allow_insecure_http)
            if problem is not None:
                raise ValueError(f"{key}: {display_url(url)!r} {problem}")
        return self
