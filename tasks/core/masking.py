"""Masking direct identifiers in ``ops/quarantine`` records (and in text meant for people).

A quarantine record must let someone find and fix a bad row without holding the person's
identity: it keeps the rule, the column, the source and its record id, and *masked* values of
every direct identifier:

- an email keeps its first character, the first character of its domain and the top-level
  domain: ``jane.doe@example.com`` -> ``j***@e***.com``;
- a phone number keeps its last two digits: ``+44 20 7946 0958`` -> ``***58``;
- any other identifier (a name, an address) keeps its first character: ``Jane`` -> ``J***``.

Which columns are identifiers comes from the table catalogue (:mod:`tasks.core.tables`) and,
as a second line of defence, from the column's name (``email``, ``customer_email``,
``firstname``, ``phone`` ...). Email addresses found in any other text of a record are masked
too, and the raw text of a record a reader could not parse is replaced by its length and a
SHA-256 fingerprint (its content cannot be told apart from an identifier). Masking a masked
value returns it unchanged, so records can be masked again safely.

Example:
    >>> mask_value("jane.doe@example.com")
    'j***@e***.com'
    >>> mask_value("+44 20 7946 0958"), mask_value("Jane")
    ('***58', 'J***')
    >>> mask_emails("sent to jane.doe@example.com: rejected")
    'sent to j***@e***.com: rejected'
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection
from typing import Any

import polars as pl

MASK = "***"
PII_NAME_PARTS = (
    "email",
    "e_mail",
    "phone",
    "mobile",
    "firstname",
    "first_name",
    "lastname",
    "last_name",
    "fullname",
    "full_name",
    "surname",
    "address",
    "ip",
)
"""A column whose lower-cased name (without ``_raw``) equals or contains one of these is treated
as a direct identifier even where the catalogue does not list it (``ip`` only as a whole name
or an ``ip_`` / ``_ip`` part)."""

# Local parts may hold any character but separators (an address quoted in JSON, a URL query or
# an error message ends at a quote, a bracket, ``=`` or ``&``); the ``*`` of a masked local
# part is excluded, so a masked address is not matched again.
_EMAIL = re.compile(r"[^\s@\"'<>(),:;\[\]\\{}=&?/*]+@[\w\-]+(?:\.[\w\-]+)+")
_MASKED = re.compile(r"^(?:.?\*\*\*|\*\*\*\d{0,2}|.?\*\*\*@.?\*\*\*(?:\.[^.@]+)?)$")
_PHONE = re.compile(r"^[+()\d\s.\-/]*$")
_MIN_PHONE_DIGITS = 5


def mask_email(text: str) -> str:
    """``jane.doe@example.com`` -> ``j***@e***.com``."""
    local, _, domain = text.strip().rpartition("@")
    tld = domain.rsplit(".", 1)[1] if "." in domain else ""
    return f"{local[:1]}{MASK}@{domain[:1]}{MASK}" + (f".{tld}" if tld else "")


def mask_phone(text: str) -> str:
    """``+44 20 7946 0958`` -> ``***58``: the last two digits only."""
    digits = re.sub(r"\D", "", text)
    return f"{MASK}{digits[-2:]}"


def mask_value(value: str) -> str:
    """The masked form of one identifier value (email, phone or other text), by its shape."""
    text = value.strip()
    if not text or _MASKED.match(text):
        return text
    if "@" in text and _EMAIL.fullmatch(text):
        return mask_email(text)
    if _PHONE.match(text) and sum(c.isdigit() for c in text) >= _MIN_PHONE_DIGITS:
        return mask_phone(text)
    return f"{text[:1]}{MASK}"


def mask_emails(text: str) -> str:
    """``text`` with every email address in it masked (other text unchanged)."""
    return _EMAIL.sub(lambda m: mask_email(m.group(0)), text)


_SEP = r"\s@\"'<>(),:;\[\]\\{}=&?/*"
_EMAIL_PARTS = rf"([^{_SEP}])[^{_SEP}]*@(\w)[\w\-]*(?:\.[\w\-]+)*\.([\w\-]+)"


def mask_emails_expr(expr: pl.Expr) -> pl.Expr:
    """:func:`mask_emails` as a polars expression (for columns of free text, e.g. URLs)."""
    return expr.str.replace_all(_EMAIL_PARTS, f"${{1}}{MASK}@${{2}}{MASK}.${{3}}")


def is_pii_name(column: str) -> bool:
    """Whether a column's name says it holds a direct identifier (see :data:`PII_NAME_PARTS`)."""
    name = column.lower().removesuffix("_raw")
    if name == "ip" or name.startswith("ip_") or name.endswith("_ip"):
        return True
    return any(part in name for part in PII_NAME_PARTS if part != "ip")


def mask_json_value(value: Any, *, identifier: bool) -> Any:
    """A JSON value with identifiers masked: all of its text if ``identifier``, else emails."""
    if isinstance(value, dict):
        return mask_row(value, ())
    if isinstance(value, list):
        return [mask_json_value(v, identifier=identifier) for v in value]
    if isinstance(value, str):
        return mask_value(value) if identifier else mask_emails(value)
    if identifier and isinstance(value, int | float) and not isinstance(value, bool):
        return mask_value(str(value))
    return value


def mask_row(row: dict[str, Any], pii: Collection[str]) -> dict[str, Any]:
    """A row (as a JSON object) with its identifier columns masked and emails elsewhere masked.

    The raw text of an unparseable record (key ``raw``) becomes ``raw_chars`` and
    ``raw_sha256``: enough to match it against the source, nothing of its content.
    """
    masked: dict[str, Any] = {}
    for key, value in row.items():
        if key == "raw" and isinstance(value, str):
            masked["raw_chars"] = len(value)
            masked["raw_sha256"] = hashlib.sha256(value.encode("utf-8")).hexdigest()
            continue
        identifier = key in pii or is_pii_name(key)
        masked[key] = mask_json_value(value, identifier=identifier)
    return masked


def mask_row_json(text: str | None, pii: Collection[str]) -> str | None:
    """:func:`mask_row` over a JSON object's text (other text: emails masked)."""
    if text is None:
        return None
    try:
        row = json.loads(text)
    except ValueError:
        return mask_emails(text)
    if not isinstance(row, dict):
        return json.dumps(mask_json_value(row, identifier=False))
    masked = mask_row(row, pii)
    if masked == row:
        return text
    # Keep the writer's spelling (compact from polars, spaced from json.dumps).
    separators = (", ", ": ") if '": ' in text else (",", ":")
    return json.dumps(masked, ensure_ascii=False, separators=separators)


def mask_record_value(value: str | None, column: str | None, pii: Collection[str]) -> str | None:
    """A record's ``value``: masked whole when its column is an identifier, else its emails."""
    if value is None:
        return None
    if column is not None and (column in pii or is_pii_name(column)):
        return mask_value(value)
    return mask_emails(value)


def mask_quarantine(records: pl.DataFrame, pii: Collection[str] = ()) -> pl.DataFrame:
    """``ops/quarantine`` records with every identifier in ``value`` and ``row`` masked.

    ``pii`` names the identifier columns of the table the records come from (the catalogue's
    ``pii`` of that table); columns named like identifiers are masked as well. The record ids
    (``quarantine_id``) are left as they are: they were derived from the unmasked row, so
    distinct rows keep distinct records.
    """
    if records.height == 0:
        return records
    wanted = set(pii)
    values = [
        mask_record_value(v, c, wanted)
        for v, c in zip(records["value"].to_list(), records["column"].to_list(), strict=True)
    ]
    rows = [mask_row_json(r, wanted) for r in records["row"].to_list()]
    return records.with_columns(
        pl.Series("value", values, dtype=pl.String), pl.Series("row", rows, dtype=pl.String)
    )
