"""The Mailchimp destination as one class, and how ``pipeline.yaml`` opens it."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import httpx

from tasks.connectors.destinations.mailchimp.client import MAX_BATCH, MAX_CONNECTIONS
from tasks.connectors.destinations.mailchimp.erasure import MailchimpErasure
from tasks.connectors.destinations.mailchimp.fields import MailchimpFields
from tasks.connectors.destinations.mailchimp.members import MailchimpMembers
from tasks.connectors.destinations.mailchimp.suppressions import MailchimpSuppressions
from tasks.connectors.destinations.protocol import Destination, Limits
from tasks.connectors.http import RetryPolicy, build_client
from tasks.connectors.redact import register_secret
from tasks.core.config import MailchimpDestination
from tasks.core.settings import resolve_secret


class Mailchimp(MailchimpFields, MailchimpMembers, MailchimpSuppressions, MailchimpErasure):
    """One Mailchimp account: the :class:`Destination` protocol over Marketing API v3.

    ``client`` carries the base URL and the API key (HTTP Basic); give it a connection pool of
    at least ``max_connections``. ``erase_lists`` are the list ids :meth:`erase` deletes from
    (Mailchimp erases per list, and the protocol's ``erase`` names no audience).
    """

    kind: ClassVar[str] = "mailchimp"
    limits: ClassVar[Limits] = Limits(
        batch_size=MAX_BATCH,
        max_connections=MAX_CONNECTIONS,
        # Mailchimp documents no request rate, only the connection ceiling; one batch call per
        # second per connection is the planning figure (a 500-member batch takes about that).
        requests_per_second=float(MAX_CONNECTIONS),
        burst=MAX_CONNECTIONS,
    )


def open_mailchimp(config: MailchimpDestination, *, policy: RetryPolicy | None = None) -> Mailchimp:
    """The protocol adapter for one configured Mailchimp account (erasing from its lists).

    HTTP Basic with any user name and the API key; a pool of :data:`MAX_CONNECTIONS`.
    ``policy``: the retry policy (default: the client's), as for the other platforms.
    """
    key = resolve_secret(config.api_key).get_secret_value()
    register_secret(key)
    client = build_client(
        config.base_url,
        auth=httpx.BasicAuth("audience-lake", key),
        max_connections=MAX_CONNECTIONS,
        allow_insecure_http=config.allow_insecure_http,
        ca_bundle=config.ca_bundle,
        owner="destinations.mailchimp",
    )
    return Mailchimp(
        client,
        batch_size=config.batch_size,
        erase_lists=sorted(set(config.list_ids())),
        policy=policy,
    )


if TYPE_CHECKING:  # mypy checks that the adapter keeps the protocol
    _DESTINATION: type[Destination] = Mailchimp
