"""A receiver from a source's ``receiver:`` options in ``pipeline.yaml``."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tasks.connectors.webhook.landing import Landing
from tasks.connectors.webhook.protocol import LandedBatch
from tasks.connectors.webhook.receiver import WebhookReceiver
from tasks.core.config_events import WebhookReceiverOptions
from tasks.core.settings import resolve_secret


def receiver_from_options(
    landing: Landing,
    options: WebhookReceiverOptions,
    *,
    source_name: str,
    event_id_field: str = "event_id",
    host: str | None = None,
    port: int | None = None,
    on_landed: Callable[[LandedBatch], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> WebhookReceiver:
    """The receiver a source's ``receiver:`` options describe (``host``/``port`` override them).

    Raises:
        ConfigError: the signing secret is not set in the environment.
    """
    secret = None
    if options.signing_secret is not None:
        secret = resolve_secret(options.signing_secret, env).get_secret_value().encode()
    return WebhookReceiver(
        landing,
        source_name=source_name,
        event_id_field=event_id_field,
        path=options.path,
        secret=secret,
        allow_unsigned=options.signing == "none",
        signature_header=options.signature_header,
        timestamp_header=options.timestamp_header,
        tolerance_seconds=options.tolerance_seconds,
        max_body_bytes=options.max_body_bytes,
        max_events=options.max_events,
        max_connections=options.max_connections,
        request_timeout_seconds=options.request_timeout_seconds,
        host=options.host if host is None else host,
        port=options.port if port is None else port,
        on_landed=on_landed,
    )
