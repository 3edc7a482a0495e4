"""Strict JSON for event bodies: RFC 8259 only, numbers of bounded length, bounded depth.

A text the receiver will not land is a :class:`~.protocol.WebhookRejection` (400) naming the
reason, never quoting the input.
"""

from __future__ import annotations

import json
import math
from http import HTTPStatus
from typing import Any

from tasks.connectors.webhook.protocol import WebhookRejection

_MAX_NUMBER_CHARS = 64  # longer number literals are refused, not handed to int()/float()
_MAX_NESTING = 64  # deepest JSON nesting an event may have


class _Unacceptable(ValueError):
    """A JSON text the receiver will not land (a reason, never a quote of the input)."""


def _reject_constant(name: str) -> Any:
    raise _Unacceptable(f"{name} is not a JSON value")


def _bounded_int(literal: str) -> int:
    if len(literal) > _MAX_NUMBER_CHARS:
        raise _Unacceptable(f"an integer literal has {len(literal)} digits")
    return int(literal)


def _finite_float(literal: str) -> float:
    if len(literal) > _MAX_NUMBER_CHARS:
        raise _Unacceptable(f"a number literal has {len(literal)} characters")
    value = float(literal)
    if not math.isfinite(value):
        raise _Unacceptable("a number is out of the float range")
    return value


_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, parse_int=_bounded_int, parse_float=_finite_float
)


def _loads(text: str, where: str) -> Any:
    """RFC 8259 JSON: no NaN/Infinity, numbers of bounded length, bounded depth.

    Raises:
        json.JSONDecodeError: the text is not JSON (the caller may try another framing).
        WebhookRejection: the text is JSON the receiver refuses.
    """
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError:
        raise
    except _Unacceptable as exc:
        raise WebhookRejection(HTTPStatus.BAD_REQUEST, f"{where}: {exc}") from None
    except RecursionError:
        raise WebhookRejection(HTTPStatus.BAD_REQUEST, f"{where}: JSON nested too deeply") from None


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, computed without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        if deepest > _MAX_NESTING:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest
