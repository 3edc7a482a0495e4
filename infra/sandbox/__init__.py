"""Local sandbox: deterministic sample data and loopback stand-ins for the CRM and Mailchimp.

Public names are resolved lazily so ``python -m infra.sandbox.generate`` (or ``.serve``) does not
import the module twice (which makes ``runpy`` warn).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "REFERENCE_TIME": "infra.sandbox.generate",
    "SampleManifest": "infra.sandbox.generate",
    "generate": "infra.sandbox.generate",
    "CrmStandIn": "infra.sandbox.crm",
    "MailchimpStandIn": "infra.sandbox.mailchimp",
    "subscriber_hash": "infra.sandbox.mailchimp",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'infra.sandbox' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
