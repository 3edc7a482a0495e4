"""Token stores that need Prefect: a rotated OAuth refresh token kept in a Prefect Secret block.

Connectors may not import Prefect, so this store lives in the task layer and registers itself
with :func:`tasks.connectors.auth.register_token_store` when imported (the ingest task imports
it). ``pipeline.yaml``::

    auth:
      type: oauth2_refresh_token
      ...
      token_store: {kind: prefect_secret, name: shopify-refresh-token}

The block holds the current refresh token, encrypted at rest by the Prefect server and masked in
the UI; the first run falls back to the ``refresh_token`` secret from the environment.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.system import Secret

from tasks.connectors.auth import register_token_store

PREFECT_SECRET = "prefect_secret"


class PrefectSecretTokenStore:
    """A Prefect ``Secret`` block named ``block_name`` (lowercase letters, digits, dashes)."""

    def __init__(self, block_name: str) -> None:
        self.block_name = block_name

    @property
    def description(self) -> str:
        return f"Prefect Secret block {self.block_name!r}"

    def load(self) -> str | None:
        try:
            block: Any = Secret.load(self.block_name, _sync=True)  # type: ignore[call-arg]
        except ValueError:  # no such block yet: the first run
            return None
        value = block.get()
        return value if isinstance(value, str) and value else None

    def save(self, value: str) -> None:
        Secret(value=value).save(self.block_name, overwrite=True, _sync=True)  # type: ignore[call-arg]


register_token_store(PREFECT_SECRET, PrefectSecretTokenStore)
