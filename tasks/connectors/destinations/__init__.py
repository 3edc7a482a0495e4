"""Destinations, selected by the ``kind`` of a destination in ``pipeline.yaml``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import httpx

from tasks.connectors.destinations.hubspot import open_hubspot
from tasks.connectors.destinations.klaviyo import open_klaviyo
from tasks.connectors.destinations.mailchimp import (
    MailchimpAudience,
    MemberChange,
    MemberResult,
    open_mailchimp,
)
from tasks.connectors.destinations.protocol import Destination as PlatformDestination
from tasks.connectors.http import RetryPolicy, build_client
from tasks.connectors.redact import register_secret
from tasks.core.config import Destination, MailchimpDestination
from tasks.core.settings import resolve_secret
from tasks.errors import ConfigError

__all__ = [
    "DESTINATIONS",
    "PLATFORMS",
    "AudienceSink",
    "MemberChange",
    "MemberResult",
    "open_destination",
    "open_platform",
]


class AudienceSink(Protocol):
    def send(self, list_id: str, changes: Sequence[MemberChange]) -> Iterator[MemberResult]: ...

    def close(self) -> None: ...

    def probe(self, list_ids: Sequence[str], *, policy: RetryPolicy | None = None) -> str:
        """Cheap authenticated reads of the destination and its lists; never a write."""
        ...


def _open_mailchimp(config: MailchimpDestination) -> AudienceSink:
    key = resolve_secret(config.api_key).get_secret_value()
    register_secret(key)
    # Mailchimp: HTTP Basic with any user name and the API key; at most 10 connections.
    client = build_client(
        config.base_url,
        auth=httpx.BasicAuth("audience-lake", key),
        max_connections=10,
        allow_insecure_http=config.allow_insecure_http,
        ca_bundle=config.ca_bundle,
        owner="destinations.mailchimp",
    )
    return MailchimpAudience(client, batch_size=config.batch_size)


# The first/last-name Mailchimp sink the publish engine used before the destination protocol;
# kept for callers outside the engine. The engine and the doctor open PLATFORMS.
DESTINATIONS: dict[str, Callable[[Any], AudienceSink]] = {"mailchimp": _open_mailchimp}
PLATFORMS: dict[str, Callable[[Any], PlatformDestination]] = {
    "mailchimp": open_mailchimp,
    "klaviyo": open_klaviyo,
    "hubspot": open_hubspot,
}
"""Every platform the publish engine sends to, by ``kind``: one line per platform."""


def open_platform(config: Destination) -> PlatformDestination:
    """The destination-protocol adapter for one configured destination."""
    if config.kind not in PLATFORMS:
        raise ConfigError(f"destination kind {config.kind!r} has no platform adapter")
    return PLATFORMS[config.kind](config)


def open_destination(config: Destination) -> AudienceSink:
    if config.kind not in DESTINATIONS:
        raise ConfigError(
            f"destination kind {config.kind!r} has only a destination-protocol adapter "
            "(open_platform)"
        )
    return DESTINATIONS[config.kind](config)
