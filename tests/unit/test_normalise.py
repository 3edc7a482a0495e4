"""Every normaliser: worked examples, plus hypothesis properties (idempotent, never raises).

The properties run each normaliser on a whole column of arbitrary strings (nulls and empty
strings included), which is how the transform calls them: once per frame, not once per value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.core.canonical import NormaliseOptions, normalisation_losses, to_canonical
from tasks.core.config import SqlSource, parse_pipeline
from tasks.core.normalise import (
    clean_text,
    contact_key,
    is_valid_email,
    normalise_country,
    normalise_currency,
    normalise_email,
    normalise_label,
    normalise_name,
    normalise_phone,
    parse_bool,
    parse_decimal,
    parse_timestamp,
    to_reporting_currency,
)
from tasks.errors import ConfigError

Normaliser = Callable[[pl.Expr], pl.Expr]

NORMALISERS: dict[str, Normaliser] = {
    "email": normalise_email,
    "phone_de": lambda e: normalise_phone(e, default_region="DE"),
    "phone_us": lambda e: normalise_phone(e, default_region="US"),
    "country": normalise_country,
    "name": normalise_name,
    "text": clean_text,
    "label": normalise_label,
    "currency": normalise_currency,
}


def apply(normaliser: Normaliser, values: list[str | None]) -> list[object]:
    return (
        pl.DataFrame({"v": values}, schema={"v": pl.String})
        .select(normaliser(pl.col("v")))["v"]
        .to_list()
    )


def one(normaliser: Normaliser, value: str | None) -> object:
    return apply(normaliser, [value])[0]


# Arbitrary text, and text shaped like what each normaliser usually sees, so the properties
# also exercise the paths that do real work (IDNA, phone parsing), not only the reject path.
ANY_TEXT = st.text(max_size=40)
EMAILISH = st.builds(
    lambda local, domain, tld, pad: f"{pad}{local}@{domain}.{tld}{pad}",
    st.text(min_size=1, max_size=10),
    st.text(min_size=1, max_size=12),
    st.sampled_from(["de", "COM", "рф", "中国", "xn--p1ai", "c"]),
    st.sampled_from(["", " ", "\u00a0", "\t"]),
)
PHONEISH = st.text(alphabet="+0123456789 ()-./x", max_size=20)
COUNTRYISH = st.sampled_from(
    ["de", "DEU", "Germany", "U.K.", "c\u00f4te d\u2019ivoire", "  us  ", "xx"]
)
SHAPED: dict[str, st.SearchStrategy[str]] = {
    "email": EMAILISH,
    "phone_de": PHONEISH,
    "phone_us": PHONEISH,
    "country": COUNTRYISH,
}


@pytest.mark.parametrize("name", sorted(NORMALISERS))
def test_every_normaliser_is_idempotent_and_never_raises(name: str) -> None:
    normaliser = NORMALISERS[name]
    values = st.one_of(ANY_TEXT, SHAPED.get(name, ANY_TEXT), st.none())

    @given(st.lists(values, max_size=12))
    @settings(max_examples=150, deadline=None)
    def check(column: list[str | None]) -> None:
        once = apply(normaliser, column)
        assert len(once) == len(column)
        strings = [v if isinstance(v, str) or v is None else str(v) for v in once]
        assert apply(normaliser, strings) == once

    check()


@given(st.lists(st.one_of(ANY_TEXT, st.none()), max_size=12))
@settings(max_examples=150, deadline=None)
def test_timestamps_never_raise_and_reparsing_the_result_changes_nothing(
    column: list[str | None],
) -> None:
    frame = pl.DataFrame({"v": column}, schema={"v": pl.String})
    once = frame.select(parse_timestamp(pl.col("v"), pl.String()))
    assert once.schema["v"] == pl.Datetime("us", "UTC")
    twice = once.select(parse_timestamp(pl.col("v"), once.schema["v"]))
    assert twice.equals(once)


@given(st.lists(st.one_of(ANY_TEXT, st.none()), max_size=12))
@settings(max_examples=100, deadline=None)
def test_bools_and_decimals_never_raise(column: list[str | None]) -> None:
    frame = pl.DataFrame({"v": column}, schema={"v": pl.String})
    out = frame.select(
        parse_bool(pl.col("v"), pl.String()).alias("b"),
        parse_decimal(pl.col("v"), pl.String()).alias("d"),
    )
    assert out.schema == pl.Schema({"b": pl.Boolean, "d": pl.Float64})
    assert out["d"].drop_nulls().is_finite().all()


# --- emails -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Jane.Doe@Example.COM ", "jane.doe@example.com"),
        ("\u00a0JANE@EXAMPLE.COM\n", "jane@example.com"),  # NBSP and newline are whitespace
        ("Ivan@Пример.РФ", "ivan@xn--e1afmkfd.xn--p1ai"),  # IDNA-encoded domain
        ("jörg@bücher.de", "jörg@xn--bcher-kva.de"),  # local part keeps its letters
        ("Zoe\u0308@example.com", "zoë@example.com"),  # decomposed -> NFC
        ("", None),
        ("   ", None),
        (None, None),
        ("not-an-email", "not-an-email"),  # kept for the contract to quarantine, with its value
    ],
)
def test_normalise_email(raw: str | None, expected: str | None) -> None:
    assert one(normalise_email, raw) == expected


@pytest.mark.parametrize(
    ("email", "valid"),
    [
        ("jane@example.com", True),
        ("j.a.n.e+tag@mail.example.co.uk", True),
        ("o'brien@example.ie", True),
        ("jörg@xn--bcher-kva.de", True),
        ("ivan@xn--e1afmkfd.xn--p1ai", True),
        ("jane@", False),
        ("@example.com", False),
        ("jane@example", False),  # no TLD
        ("jane@example.c", False),  # one-letter TLD
        ("jane..doe@example.com", False),
        (".jane@example.com", False),
        ("jane@-example.com", False),
        ("jane@exa_mple.com", False),
        ("ja ne@example.com", False),
        ("jane@bücher.de", False),  # a domain that is not IDNA-encoded
        ("a@b@example.com", False),
        ("x" * 65 + "@example.com", False),  # local part over 64 bytes
        ("x@" + "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 60 + ".com", False),
    ],
)
def test_email_syntax_check(email: str, valid: bool) -> None:
    assert one(is_valid_email, email) is valid


def test_email_syntax_of_null_is_null() -> None:
    assert one(is_valid_email, None) is None


# --- phones -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+49 30 1234567", "DE", "+49301234567"),
        ("030-1234567", "DE", "+49301234567"),  # national format, default region
        ("0049 (30) 123 4567", "DE", "+49301234567"),  # international prefix from DE
        ("+1 650-253-0000", "DE", "+16502530000"),  # explicit country code beats the default
        ("(650) 253-0000", "US", "+16502530000"),
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("12", "DE", None),  # too short to be a number
        ("+49 30", "DE", None),
        ("call me maybe", "DE", None),
        ("", "DE", None),
        (None, "DE", None),
    ],
)
def test_normalise_phone(raw: str | None, region: str, expected: str | None) -> None:
    assert one(lambda e: normalise_phone(e, default_region=region), raw) == expected


def test_normalise_phone_rejects_an_unknown_region() -> None:
    with pytest.raises(ValueError, match="'XX'"):
        normalise_phone(pl.col("p"), default_region="XX")


# --- countries --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("DE", "DE"),
        ("de", "DE"),
        (" PL ", "PL"),
        ("DEU", "DE"),
        ("Germany", "DE"),
        ("germany", "DE"),
        ("United Kingdom", "GB"),
        ("UK", "GB"),
        ("U.K.", "GB"),
        ("England", "GB"),
        ("USA", "US"),
        ("United States", "US"),
        ("United States of America", "US"),
        ("Türkiye", "TR"),
        ("Turkey", "TR"),
        ("C\u00f4te d\u2019Ivoire", "CI"),  # accents and typographic apostrophe
        ("South Korea", "KR"),
        ("Netherlands", "NL"),
        ("Holland", "NL"),
        ("Atlantis", None),
        ("", None),
        (None, None),
    ],
)
def test_normalise_country(raw: str | None, expected: str | None) -> None:
    assert one(normalise_country, raw) == expected


# --- names, text, labels, currencies ----------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Jane ", "Jane"),
        ("Mary  \t Ann", "Mary Ann"),  # internal whitespace collapsed
        ("van der  Berg", "van der Berg"),  # case kept
        ("McDonald", "McDonald"),
        ("Zoe\u0308", "Zoë"),
        ("\u00a0", None),
        ("", None),
    ],
)
def test_normalise_name(raw: str, expected: str | None) -> None:
    assert one(normalise_name, raw) == expected


def test_labels_are_lowercase_and_currencies_uppercase_codes() -> None:
    assert one(normalise_label, "  Delivered ") == "delivered"
    assert apply(normalise_currency, [" eur ", "€", "£", "usd", "$", ""]) == [
        "EUR",
        "EUR",
        "GBP",
        "USD",
        "$",  # ambiguous: kept, and the order contract quarantines it
        None,
    ]


def test_amounts_convert_only_where_a_rate_is_configured() -> None:
    frame = pl.DataFrame(
        {"amount": [10.0, 10.0, 10.0, 10.0], "currency": ["EUR", "USD", "JPY", None]}
    )
    out = frame.select(
        to_reporting_currency(pl.col("amount"), pl.col("currency"), rates={"EUR": 1, "USD": 0.9})
    ).to_series()
    assert out.to_list() == [10.0, 9.0, None, None]  # never guessed


# --- timestamps -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-10-03T11:22:33.123Z", datetime(2026, 10, 3, 11, 22, 33, 123000, tzinfo=UTC)),
        ("2026-10-03T11:22:33Z", datetime(2026, 10, 3, 11, 22, 33, tzinfo=UTC)),
        ("2026-10-03T13:22:33+02:00", datetime(2026, 10, 3, 11, 22, 33, tzinfo=UTC)),
        ("2026-10-03T06:22:33-0500", datetime(2026, 10, 3, 11, 22, 33, tzinfo=UTC)),
        ("2026-10-03 11:22:33", datetime(2026, 10, 3, 11, 22, 33, tzinfo=UTC)),  # naive = UTC
        (" 2026-10-03 ", datetime(2026, 10, 3, tzinfo=UTC)),
        ("03/10/2026", None),
        ("yesterday", None),
    ],
)
def test_parse_timestamp_strings_to_utc(raw: str, expected: datetime | None) -> None:
    assert one(lambda e: parse_timestamp(e, pl.String()), raw) == expected


def test_parse_timestamp_converts_datetime_columns_to_utc() -> None:
    berlin = datetime(2026, 10, 3, 13, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # CEST, UTC+2
    local = pl.DataFrame({"t": [berlin]}, schema={"t": pl.Datetime("ms", "Europe/Berlin")})
    out = local.select(parse_timestamp(pl.col("t"), local.schema["t"]))
    assert out.schema["t"] == pl.Datetime("us", "UTC")
    assert out.item() == datetime(2026, 10, 3, 11, 0, tzinfo=UTC)
    naive = pl.DataFrame({"t": [datetime(2026, 10, 3, 13, 0)]})
    assert naive.select(parse_timestamp(pl.col("t"), naive.schema["t"])).item() == datetime(
        2026, 10, 3, 13, 0, tzinfo=UTC
    )


# --- keys -------------------------------------------------------------------------------------
def test_contact_key_is_peppered_versioned_and_computed_per_distinct_email() -> None:
    emails = ["a@x.io", "b@x.io", "a@x.io", None]
    keys = apply(lambda e: contact_key(e, pepper=b"p", version=2), emails)
    assert keys[0] == keys[2] != keys[1]
    assert keys[3] is None
    assert all(isinstance(k, str) and k.startswith("v2:") and len(k) == 67 for k in keys[:3])
    other = apply(lambda e: contact_key(e, pepper=b"q", version=2), emails)
    assert other[0] != keys[0]


# --- canonical mapping ------------------------------------------------------------------------
def test_to_canonical_normalises_each_field_and_counts_what_it_could_not_read() -> None:
    source = SqlSource(
        kind="sql", role="contacts", url="sqlite:///x.db", table="people", primary_key="id",
        fields={"source_id": "id", "email": "mail", "updated_at": "changed"},
    )  # fmt: skip
    bronze = pl.LazyFrame(
        {
            "id": ["1", "2"],
            "mail": [" Ann@Example.COM", "bob@example.com"],
            "changed": ["2026-10-01T00:00:00Z", "2026-10-02T00:00:00+02:00"],
            "first_name": ["  Ann  Marie ", None],
            "phone": ["+1 650 253 0000", "no phone"],
            "country": ["Deutschland", "uk"],
            "opted_in": ["yes", "0"],
        }
    )
    out = to_canonical(
        bronze, source, source_name="people", options=NormaliseOptions(default_phone_region="US")
    ).collect()
    assert out["email"].to_list() == ["ann@example.com", "bob@example.com"]
    assert out["email_raw"].to_list() == [" Ann@Example.COM", "bob@example.com"]
    assert out["first_name"].to_list() == ["Ann Marie", None]
    assert out["phone"].to_list() == ["+16502530000", None]
    assert out["country"].to_list() == [None, "GB"]  # only English names are known
    assert out["opted_in"].to_list() == [True, False]
    assert out["updated_at"].to_list() == [
        datetime(2026, 10, 1, tzinfo=UTC),
        datetime(2026, 10, 1, 22, tzinfo=UTC),
    ]
    losses = normalisation_losses(out.lazy()).collect()
    assert losses.to_dicts() == [
        {"source": "people", "field": "country", "values": 1, "example": "Deutschland"},
        {"source": "people", "field": "phone", "values": 1, "example": "n***"},  # masked
    ]


# --- configuration of the normalisers ---------------------------------------------------------
BASE = """
sources:
  crm:
    kind: sql
    role: contacts
    url: sqlite:///x.db
    table: people
    primary_key: id
    fields: {source_id: id}
"""


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        ("default_phone_region: XX", "transform.default_phone_region: 'XX' is not a phone region"),
        ("currency: {reporting: EURO}", "transform.currency.reporting: 'EURO' is not an ISO-4217"),
        ("currency: {rates: {ABC: 1.0}}", "transform.currency.rates: not ISO-4217 currency"),
        ("currency: {rates: {USD: 0}}", "transform.currency.rates.USD: Input should be greater"),
        ("currency: {rates: {USD: .nan}}", "transform.currency.rates.USD: Input should be"),
        ("identity: {source_priority: [nope]}", "transform.identity: unknown source(s) ['nope']"),
        (
            "identity: {attribute_priority: {shoe_size: [crm]}}",
            "unknown attribute(s) ['shoe_size']",
        ),
        ("features: {rfm_window_days: 0}", "transform.features.rfm_window_days: Input should be"),
    ],
)
def test_transform_config_errors_name_the_key(transform: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_pipeline(BASE + f"transform:\n  {transform}\n", env={})


def test_transform_config_defaults_and_rates() -> None:
    config = parse_pipeline(
        BASE + "transform:\n  currency: {reporting: GBP, rates: {EUR: 0.85}}\n", env={}
    )
    assert config.transform.currency.to_reporting() == {"EUR": 0.85, "GBP": 1.0}
    assert config.transform.default_phone_region == "DE"
    assert parse_pipeline(BASE, env={}).transform.currency.to_reporting() == {"EUR": 1.0}
