"""Polars expressions that turn messy source values into canonical ones.

Every normaliser takes and returns a ``pl.Expr`` so callers compose them inside
``with_columns``. They share three promises, each checked by a property test:

- **never raise** on any input string: a value that cannot be normalised becomes null (or, for
  emails, stays as cleaned text that the contract's syntax check then quarantines);
- **idempotent**: normalising a normalised value changes nothing;
- **vectorised**: polars expressions throughout; per-value Python runs only where a maintained
  library holds the knowledge (``idna`` for internationalised domains, ``phonenumbers`` for
  numbering plans), and then once per *distinct* value, never per row.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from collections.abc import Callable, Mapping
from functools import lru_cache, partial

import idna
import phonenumbers
import polars as pl
import pycountry

UTC_MICROS = pl.Datetime("us", "UTC")

# --- emails ---------------------------------------------------------------------------------
# RFC 5321/5322 "dot-atom" shape, lenient where real mailboxes are: the local part may hold any
# printable non-space character except the specials that need quoting (and no empty dot
# segments); the domain is ASCII after IDNA encoding: LDH labels of at most 63 characters and a
# letter TLD (or an IDNA ``xn--`` TLD). Quoted local parts and IP-literal domains are rejected:
# no marketing platform accepts them.
_LOCAL_ATOM = r"[^\s@\"(),:;<>\[\]\\.\x00-\x1f\x7f]+"
_DOMAIN_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_TLD = r"(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})"
EMAIL_PATTERN = rf"^{_LOCAL_ATOM}(?:\.{_LOCAL_ATOM})*@(?:{_DOMAIN_LABEL}\.)+{_TLD}$"
EMAIL_MAX_BYTES = 254  # RFC 5321 path limit minus the angle brackets
EMAIL_LOCAL_MAX_BYTES = 64

_NON_ASCII = r"[^\x00-\x7f]"


def _idna_domain(domain: str) -> str:
    """``bücher.de`` -> ``xn--bcher-kva.de``; a domain IDNA rejects is returned unchanged.

    Unchanged non-ASCII domains fail the syntax check, so such an address is quarantined with
    its value rather than guessed at.
    """
    try:
        return idna.encode(domain, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return domain


def _map_distinct(values: pl.Series, function: Callable[[str], str | None]) -> pl.Series:
    """Apply ``function`` once per distinct non-null value of ``values`` (nulls stay null)."""
    distinct = values.drop_nulls().unique()
    if distinct.is_empty():
        return values.cast(pl.String)
    mapping = {value: function(value) for value in distinct.to_list()}
    return values.replace_strict(mapping, default=None, return_dtype=pl.String)


def _idna_domains(domains: pl.Series) -> pl.Series:
    needs_encoding = domains.str.contains(_NON_ASCII).fill_null(False)
    if not needs_encoding.any():
        return domains
    encoded = _map_distinct(domains.filter(needs_encoding), _idna_domain)
    return domains.scatter(needs_encoding.arg_true(), encoded)


def normalise_email(expr: pl.Expr) -> pl.Expr:
    """Trim, lowercase, Unicode-NFC, IDNA-encode the domain; empty strings become null.

    The syntax is *not* enforced here (see :func:`is_valid_email`): an invalid address keeps its
    cleaned text, so the contract can quarantine it with the value that failed.

    >>> pl.select(normalise_email(pl.lit("  Jane.Doe@Bücher.DE "))).item()
    'jane.doe@xn--bcher-kva.de'
    """
    # NFC after lowercasing: lowercasing can decompose (e.g. "İ" -> "i" + U+0307), and NFC last
    # keeps the function idempotent.
    cleaned = expr.cast(pl.String).str.strip_chars().str.to_lowercase().str.normalize("NFC")
    local = cleaned.str.extract(r"^(.*)@[^@]*$", 1)
    domain = cleaned.str.extract(r"@([^@]*)$", 1)
    encoded = domain.map_batches(_idna_domains, return_dtype=pl.String, is_elementwise=True)
    result = (
        pl.when(domain.str.contains(_NON_ASCII).fill_null(False))
        .then(pl.concat_str([local, pl.lit("@"), encoded]))
        .otherwise(cleaned)
    )
    return pl.when(cleaned.str.len_chars() > 0).then(result).otherwise(None)


def is_valid_email(expr: pl.Expr) -> pl.Expr:
    """True where a *normalised* email has a deliverable syntax and length (null stays null)."""
    local = expr.str.extract(r"^(.*)@[^@]*$", 1)
    return (
        expr.str.contains(EMAIL_PATTERN)
        & (expr.str.len_bytes() <= EMAIL_MAX_BYTES)
        & (local.str.len_bytes() <= EMAIL_LOCAL_MAX_BYTES)
    )


# --- text and names -------------------------------------------------------------------------
def clean_text(expr: pl.Expr) -> pl.Expr:
    """Unicode-NFC, collapse internal whitespace to one space, trim; empty becomes null.

    >>> pl.select(clean_text(pl.lit("  Smith,\\u00a0 Jones &  Co "))).item()
    'Smith, Jones & Co'
    """
    cleaned = (
        expr.cast(pl.String).str.normalize("NFC").str.replace_all(r"\s+", " ").str.strip_chars()
    )
    return pl.when(cleaned.str.len_chars() > 0).then(cleaned).otherwise(None)


def normalise_name(expr: pl.Expr) -> pl.Expr:
    """A person's name: cleaned text, case kept (``McDonald``, ``van der Berg`` are right)."""
    return clean_text(expr)


def normalise_label(expr: pl.Expr) -> pl.Expr:
    """A code-like label (order status, product category): cleaned and lowercased."""
    return clean_text(expr.cast(pl.String).str.to_lowercase())


# --- phone numbers --------------------------------------------------------------------------
def _e164(raw: str, region: str) -> str | None:
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _e164_batch(values: pl.Series, *, region: str) -> pl.Series:
    return _map_distinct(values, partial(_e164, region=region))


def phone_regions() -> frozenset[str]:
    """ISO-3166 alpha-2 regions whose numbering plans ``phonenumbers`` knows."""
    return frozenset(phonenumbers.SUPPORTED_REGIONS)


def normalise_phone(expr: pl.Expr, *, default_region: str) -> pl.Expr:
    """E.164 (``+493012345678``) via Google's numbering plans (``phonenumbers``), else null.

    Numbers without a country code are read as ``default_region`` numbers (ISO-3166 alpha-2).
    Only numbers valid in their numbering plan survive; anything else becomes null, and the
    transform reports how many values it could not parse.

    >>> pl.select(normalise_phone(pl.lit("030 1234567"), default_region="DE")).item()
    '+49301234567'
    """
    region = default_region.upper()
    if region not in phone_regions():
        raise ValueError(f"default phone region {default_region!r} is not a supported region")
    text = expr.cast(pl.String).str.strip_chars()
    text = pl.when(text.str.len_chars() > 0).then(text).otherwise(None)
    return text.map_batches(
        partial(_e164_batch, region=region), return_dtype=pl.String, is_elementwise=True
    )


# --- countries ------------------------------------------------------------------------------
# Common English names that ISO 3166 spells differently, from the UN/ISO "short name" changes and
# the usual data-entry variants. Deliberately small: each entry is unambiguous.
_COUNTRY_ALIASES = {
    "UK": "GB",
    "GREAT BRITAIN": "GB",
    "ENGLAND": "GB",
    "SCOTLAND": "GB",
    "WALES": "GB",
    "NORTHERN IRELAND": "GB",
    "HOLLAND": "NL",
    "THE NETHERLANDS": "NL",
    "RUSSIA": "RU",
    "TURKEY": "TR",
    "CZECH REPUBLIC": "CZ",
    "IVORY COAST": "CI",
    "UAE": "AE",
    "EL": "GR",  # the EU's code for Greece
    "UNITED STATES OF AMERICA": "US",
    "THE UNITED STATES": "US",
}


def _country_key(text: str) -> str:
    """The lookup key :func:`_country_key_expr` computes, in Python (to build the table)."""
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    for quote in "\u2018\u2019`\u00b4":
        folded = folded.replace(quote, "'")
    return " ".join(folded.replace(".", "").upper().split())


def _country_key_expr(expr: pl.Expr) -> pl.Expr:
    return (
        expr.cast(pl.String)
        .str.normalize("NFKD")
        .str.replace_all(r"\p{M}", "")
        .str.replace_all(r"[\u2018\u2019`\u00b4]", "'")
        .str.replace_all(r"\.", "")
        .str.to_uppercase()
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


@lru_cache(maxsize=1)
def country_lookup() -> dict[str, str]:
    """Lookup key -> ISO-3166 alpha-2, from pycountry's ISO data plus :data:`_COUNTRY_ALIASES`."""
    table: dict[str, str] = {}
    for country in pycountry.countries:
        code = country.alpha_2
        for attr in ("alpha_2", "alpha_3", "name", "official_name", "common_name"):
            value = getattr(country, attr, None)
            if value:
                table.setdefault(_country_key(value), code)
    for alias, code in _COUNTRY_ALIASES.items():
        table[_country_key(alias)] = code
    return table


def normalise_country(expr: pl.Expr) -> pl.Expr:
    """ISO-3166 alpha-2 from a code (any case, alpha-2 or alpha-3) or an English name; else null.

    >>> pl.select(normalise_country(pl.lit(" united kingdom"))).item()
    'GB'
    """
    return _country_key_expr(expr).replace_strict(
        country_lookup(), default=None, return_dtype=pl.String
    )


# --- currencies -----------------------------------------------------------------------------
_CURRENCY_SYMBOLS = {"€": "EUR", "£": "GBP"}  # "$", "¥", "kr" are ambiguous: never guessed


def normalise_currency(expr: pl.Expr) -> pl.Expr:
    """Currency code: trimmed, uppercase; the unambiguous symbols ``€`` and ``£`` as codes.

    Whether the code is known (has a configured rate) is the contract's decision, not this one.
    """
    code = clean_text(expr).str.to_uppercase()
    return code.replace(_CURRENCY_SYMBOLS)


def iso_currencies() -> frozenset[str]:
    """ISO-4217 alphabetic codes (for validating configured rates)."""
    return frozenset(c.alpha_3 for c in pycountry.currencies)


def to_reporting_currency(
    amount: pl.Expr, currency: pl.Expr, *, rates: Mapping[str, float]
) -> pl.Expr:
    """``amount`` in the reporting currency; null when ``currency`` has no rate (never guessed).

    ``rates`` maps a currency code to the reporting-currency value of one unit (the reporting
    currency itself maps to 1).
    """
    return amount * fx_rate(currency, rates=rates)


def fx_rate(currency: pl.Expr, *, rates: Mapping[str, float]) -> pl.Expr:
    """The configured rate of ``currency`` into the reporting currency, else null."""
    mapping = {code: float(rate) for code, rate in rates.items()}
    return currency.replace_strict(mapping, default=None, return_dtype=pl.Float64)


# --- timestamps, booleans, numbers ----------------------------------------------------------
_TIMESTAMP_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.fZ",
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%dT%H:%M:%S%.f%:z",
    "%Y-%m-%dT%H:%M:%S%:z",
    "%Y-%m-%dT%H:%M:%S%.f%z",
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%d %H:%M:%S%.f%:z",
    "%Y-%m-%d %H:%M:%S%:z",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S",
)


def parse_timestamp(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A UTC microsecond timestamp from an ISO-8601 string, a datetime or a date column.

    ``dtype`` is the input column's type, so the caller decides from the schema, not per row.
    Offsets are converted to UTC; naive values are taken as UTC (every source we read documents
    UTC); unparseable strings become null. Applied to its own output it changes nothing.
    """
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            return expr.dt.replace_time_zone("UTC").cast(UTC_MICROS)
        return expr.dt.convert_time_zone("UTC").cast(UTC_MICROS)
    if isinstance(dtype, pl.Date):
        return expr.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    text = expr.cast(pl.String).str.strip_chars()
    attempts = []
    for fmt in _TIMESTAMP_FORMATS:
        parsed = text.str.strptime(pl.Datetime("us"), fmt, strict=False, exact=True)
        if "%z" in fmt or "%:z" in fmt:
            attempts.append(parsed.dt.convert_time_zone("UTC"))
        else:
            attempts.append(parsed.dt.replace_time_zone("UTC"))
    date_only = text.str.strptime(pl.Date, "%Y-%m-%d", strict=False, exact=True)
    attempts.append(date_only.cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))
    return pl.coalesce(attempts)


def parse_bool(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A boolean from true/false, yes/no, 1/0 (any case); anything else is null."""
    if dtype == pl.Boolean:
        return expr
    text = expr.cast(pl.String).str.strip_chars().str.to_lowercase()
    return (
        pl.when(text.is_in(["true", "yes", "y", "1", "t"]))
        .then(True)
        .when(text.is_in(["false", "no", "n", "0", "f"]))
        .then(False)
        .otherwise(None)
    )


def parse_decimal(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A float from a number or numeric string; anything else (and non-finite) is null."""
    value = (
        expr.cast(pl.Float64)
        if dtype.is_numeric()
        else expr.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
    )
    return pl.when(value.is_finite()).then(value).otherwise(None)


# --- keys -----------------------------------------------------------------------------------
CONTACT_KEY_PATTERN = r"^v[0-9]+:[0-9a-f]{64}$"
"""What :func:`contact_key` produces."""


def contact_key(email: pl.Expr, *, pepper: bytes, version: int) -> pl.Expr:
    """Pseudonymous id: ``v<version>:`` + HMAC-SHA256(pepper, normalised email), hex.

    The version prefix lets a rotated pepper coexist with old keys during a migration.
    """
    return keyed_hash(email, pepper=pepper, version=version)


def keyed_hash(value: pl.Expr, *, pepper: bytes, version: int) -> pl.Expr:
    """``v<version>:`` + HMAC-SHA256(pepper, value), hex: an identifier kept only as a hash
    nobody without the lake's pepper can recompute (contact keys, the consent ledger's IPs)."""
    prefix = f"v{version}:"

    def key(text: str) -> str:
        return prefix + hmac.new(pepper, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def keys(values: pl.Series) -> pl.Series:
        # Once per distinct email: events and orders repeat the same person many times.
        return _map_distinct(values, key)

    # Not element-wise on purpose: one call sees the whole column, so each distinct email is
    # hashed once (per-morsel calls would hash a frequent email once per morsel).
    return value.map_batches(keys, return_dtype=pl.String)


def sha256_hex(expr: pl.Expr) -> pl.Expr:
    """Stable SHA-256 of a string column (polars' own hash is not stable across versions)."""

    def digest(values: pl.Series) -> pl.Series:
        return pl.Series(
            values.name,
            [
                None if v is None else hashlib.sha256(v.encode("utf-8")).hexdigest()
                for v in values.to_list()
            ],
            dtype=pl.String,
        )

    return expr.map_batches(digest, return_dtype=pl.String, is_elementwise=True)
