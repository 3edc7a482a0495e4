"""``{secret: NAME}`` values kept in Prefect Secret blocks instead of the worker's environment.

A secret the environment does not set (``AUDIENCE_LAKE_SECRET_<NAME>`` wins) is read from the
Secret block ``audience-lake-<name>`` (underscores become dashes: ``mailchimp_api_key`` ->
``audience-lake-mailchimp-api-key``) on the Prefect server ``PREFECT_API_URL`` names. Without an
API URL nothing is looked up: an ephemeral server has no blocks to offer, and starting one to
find out would cost seconds.

The value travels from the Prefect API to the process that needs it and nowhere else: it is not
a deployment parameter or a job variable, so the UI never shows it in a run. The block itself is
encrypted in Prefect's database, with the limits ``tasks/token_stores.py`` spells out.

Importing this module registers the source (flows import it through ``flows/common.py``).
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.system import Secret
from prefect.settings import get_current_settings

from tasks.core.secret_sources import register_secret_source
from tasks.errors import ConfigError

BLOCK_PREFIX = "audience-lake-"


def secret_block_name(secret: str) -> str:
    """The Secret block that holds ``secret``: ``audience-lake-`` plus the name, dashed."""
    return BLOCK_PREFIX + secret.replace("_", "-")


def load_secret_block(secret: str) -> str | None:
    """The value of the block for ``secret``, or None (no API URL, no such block, empty)."""
    if not get_current_settings().api.url:
        return None
    name = secret_block_name(secret)
    try:
        block: Any = Secret.load(name, _sync=True)  # type: ignore[call-arg]
    except ValueError:  # no such block
        return None
    except Exception as exc:  # the API is down or refuses us: say which secret and block
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ConfigError(
            f"secret {secret!r}: reading the Prefect Secret block {name!r} failed: {reason}"
        ) from exc
    value = block.get()
    return value if isinstance(value, str) and value else None


register_secret_source("prefect_secret_block", load_secret_block)
