"""Token stores that need Prefect: a rotated OAuth refresh token kept in a Prefect Secret block.

Connectors may not import Prefect, so this store lives in the task layer and registers itself
with :func:`tasks.connectors.auth.register_token_store` when imported (the ingest task imports
it). ``pipeline.yaml``::

    auth:
      type: oauth2_refresh_token
      ...
      token_store: {kind: prefect_secret, name: shopify-refresh-token}

The block holds the current refresh token; the first run falls back to the ``refresh_token``
secret from the environment.

What protects the token there (checked against the Prefect 3 server code): the server encrypts
block data with a Fernet key before writing it to its database. That key is read from
``PREFECT_SERVER_ENCRYPTION_KEY`` if set; otherwise the server generates one and stores it *in the
same database* (table ``configuration``, key ``ENCRYPTION_KEY``). So, by default, anyone holding a
copy of the database (a dump, a backup, the SQLite file) holds the key and can decrypt the token:
the encryption protects a leaked database only when ``PREFECT_SERVER_ENCRYPTION_KEY`` is set and
kept somewhere else. It never protects against anyone who can call the Prefect API (every worker
and flow run, any user of the UI or of a Prefect Cloud workspace with read access to blocks):
the API hands the value back decrypted, and the UI merely masks it on screen. Treat access to the
Prefect API and database like access to the refresh token itself.
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
