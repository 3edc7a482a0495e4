"""Where a ``{secret: NAME}`` is found when the environment does not set it.

The environment (``AUDIENCE_LAKE_SECRET_<NAME>``) always wins. After it, the sources registered
here are asked in order; the task layer registers the Prefect Secret block source
(``tasks/secret_blocks.py``), since this package may not import Prefect. A source answers None
when it does not have the secret, and never raises for that.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["SecretLookup", "lookup_secret", "register_secret_source"]

SecretLookup = Callable[[str], str | None]
"""Takes a secret's name as written in ``pipeline.yaml``; returns its value or None."""

_SOURCES: dict[str, SecretLookup] = {}


def register_secret_source(name: str, lookup: SecretLookup) -> None:
    """Ask ``lookup`` for secrets the environment does not set (re-registering replaces)."""
    _SOURCES[name] = lookup


def lookup_secret(secret: str) -> str | None:
    """The value of ``secret`` from the first registered source that has it, else None."""
    for lookup in list(_SOURCES.values()):
        value = lookup(secret)
        if value:
            return value
    return None
