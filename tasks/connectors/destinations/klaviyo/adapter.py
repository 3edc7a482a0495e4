"""The Klaviyo destination as one class, and how ``pipeline.yaml`` opens it."""

from __future__ import annotations

from typing import ClassVar

import httpx

from tasks.connectors.destinations.klaviyo.client import IMPORT_MAX_PROFILES, JSONAPI
from tasks.connectors.destinations.klaviyo.consent import KlaviyoConsent
from tasks.connectors.destinations.klaviyo.erasure import KlaviyoErasure
from tasks.connectors.destinations.klaviyo.profiles import KlaviyoProfiles
from tasks.connectors.destinations.protocol import Limits
from tasks.connectors.http import RetryPolicy, build_client
from tasks.connectors.redact import register_secret
from tasks.core.config import KlaviyoDestination
from tasks.core.settings import resolve_secret


class Klaviyo(KlaviyoProfiles, KlaviyoConsent, KlaviyoErasure):
    """One Klaviyo account, addressed by list id; see the package docstring for the mapping.

    Safe to share between threads (the publish engine sends a window of jobs at once): the
    rate pacers and the call counter are shared and locked, and each job is polled by the
    thread that created it, within the same import-class budget. ``time_scale`` shrinks the
    pacers' 1-second and 1-minute windows for a stand-in whose clock runs faster.
    """

    kind: ClassVar[str] = "klaviyo"
    limits: ClassVar[Limits] = Limits(
        # One import job carries up to 10,000 profiles; its create, status and import-error
        # reads share a 10/s burst and 150/min steady limit (2.5/s sustained). Klaviyo
        # documents no connection cap: the rate limits are the ceiling.
        batch_size=IMPORT_MAX_PROFILES,
        max_connections=10,
        requests_per_second=2.5,
        burst=10,
    )


def open_klaviyo(
    config: KlaviyoDestination, *, policy: RetryPolicy | None = None, time_scale: float = 1.0
) -> Klaviyo:
    """A :class:`Klaviyo` for one configured account (the API key registered for redaction).

    ``time_scale`` > 1 only against a stand-in whose rate windows run that much faster (the
    publish benchmark); the real platform's windows are 1 s and 60 s."""
    key = resolve_secret(config.api_key).get_secret_value()
    register_secret(key)
    client = build_client(
        config.base_url,
        headers={
            "Authorization": f"Klaviyo-API-Key {key}",
            "revision": config.revision,
            "Accept": JSONAPI,
        },
        timeout=httpx.Timeout(120.0, connect=10.0, pool=10.0),
        max_connections=Klaviyo.limits.max_connections,
        allow_insecure_http=config.allow_insecure_http,
        ca_bundle=config.ca_bundle,
        owner="destinations.klaviyo",
    )
    return Klaviyo(
        client,
        policy=policy,
        batch_size=config.batch_size,
        poll_interval=config.poll_interval_seconds,
        poll_timeout=config.poll_timeout_seconds,
        tags_property=config.tags_property,
        time_scale=time_scale,
    )
