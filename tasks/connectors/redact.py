"""Keep credentials out of log records and error messages.

httpx logs every request at INFO as ``HTTP Request: GET <url> ...`` on the ``httpx`` logger, so a
key carried in a query string (``?hapikey=...``) or a secret URL (a chat webhook) would be written
wherever logs go. Rather than trusting every call site, the client factory installs
:class:`RedactingFilter` on the httpx and httpcore loggers, and every error message that can
contain a URL or a response body passes through :func:`redact`.

Three rules, applied in order:

1. every secret value this process resolved for an HTTP client (:func:`register_secret`: API
   keys, passwords, client secrets, refresh and access tokens, webhook URLs) is replaced, in its
   raw and percent-encoded spellings;
2. the user info of a URL (``https://user:password@host``) is replaced;
3. the value of a query or form parameter whose name looks secret (``key``, ``token``,
   ``secret``, ``password``, ``signature``, ``auth``..., plus any name registered with
   :func:`register_secret_param`) is replaced, whatever its value.

The registry is process-wide because logging is: a record is redacted no matter which client or
thread produced it. It holds values already in this process's memory, bounded in number.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from urllib.parse import quote, quote_plus

MASK = "***"
# Shorter values are not registered: masking every "abc" would garble logs while protecting
# little; such values are still masked by the parameter-name rule.
MIN_SECRET_LENGTH = 6
MAX_SECRETS = 1024
# Loggers that print request URLs (httpx) or connection details (httpcore). A filter on a logger
# does not apply to its children, so httpcore's sub-loggers are listed one by one.
HTTP_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)

_SECRET_WORDS = (
    r"[\w.\-]*(?:key|token|secret|passw(?:or)?d|pwd|signature|sig|auth|session|credential)"
    r"[\w.\-]*"
)
_USERINFO = re.compile(r"(?<=://)[^/\s@?#'\"]+@")

_lock = threading.Lock()
_values: OrderedDict[str, None] = OrderedDict()
_params: set[str] = set()
_param_pattern = re.compile(rf"(?i)([?&;]|\b)({_SECRET_WORDS})=([^&#\s'\"<>]*)")


def register_secret(value: str | None) -> None:
    """Mask ``value`` (and its percent-encoded spellings) in every log record and error."""
    if value is None or len(value) < MIN_SECRET_LENGTH:
        return
    spellings = {value, quote(value, safe=""), quote_plus(value)}
    with _lock:
        for spelling in spellings:
            _values[spelling] = None
            _values.move_to_end(spelling)
        while len(_values) > MAX_SECRETS:
            _values.popitem(last=False)


def register_secret_param(name: str) -> None:
    """Mask the value of query/form parameter ``name`` wherever it appears (``hapikey=...``)."""
    global _param_pattern
    with _lock:
        if name.lower() in _params:
            return
        _params.add(name.lower())
        extra = "|".join(re.escape(p) for p in sorted(_params, key=len, reverse=True))
        _param_pattern = re.compile(rf"(?i)([?&;]|\b)({extra}|{_SECRET_WORDS})=([^&#\s'\"<>]*)")


def redact(text: str) -> str:
    """``text`` with every registered secret, URL user info and secret-named parameter masked."""
    with _lock:
        values = sorted(_values, key=len, reverse=True)
        pattern = _param_pattern
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    text = _USERINFO.sub(MASK + "@", text)
    return pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}={MASK}" if m.group(3) else m[0], text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message through :func:`redact` (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's problem, not ours
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


_FILTER = RedactingFilter()


def install_log_redaction() -> None:
    """Attach the redacting filter to the HTTP loggers (idempotent; called by the factory)."""
    for name in HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


_SECRET_NAME = re.compile(rf"(?i){_SECRET_WORDS}")


def is_secret_name(name: str) -> bool:
    """Whether a parameter or field called ``name`` holds a secret by the name rule above (or
    was registered with :func:`register_secret_param`)."""
    with _lock:
        registered = name.lower() in _params
    return registered or bool(_SECRET_NAME.fullmatch(name))
