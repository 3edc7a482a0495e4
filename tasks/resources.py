"""Composition root: builds the lake adapter and other resources from the environment.

Task wrappers call these instead of receiving clients or credentials as parameters, so secrets
never travel through Prefect task inputs and nothing unhashable is passed between tasks.
"""

from __future__ import annotations

from functools import lru_cache

from tasks.connectors.lake import Lake, settings_storage_options
from tasks.core.settings import Settings, load_settings


def lake_for(settings: Settings) -> Lake:
    """The lake described by ``settings`` (local directory or S3)."""
    if settings.lake_is_local:
        return Lake(settings.lake_uri.removeprefix("file://"))
    return Lake(settings.lake_uri, settings_storage_options(settings))


@lru_cache(maxsize=4)
def _cached_lake(settings: Settings) -> Lake:
    return lake_for(settings)


def open_lake() -> Lake:
    """The configured lake, shared within a process (it caches open Delta tables)."""
    return _cached_lake(load_settings())


def pepper() -> tuple[bytes, int]:
    """The contact-key pepper and its version."""
    settings = load_settings()
    return settings.pepper.get_secret_value().encode("utf-8"), settings.pepper_version
