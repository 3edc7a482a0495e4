"""Vectorised generator of bronze tables for the transform benchmark (polars only, no loops).

Shapes follow the sandbox (``infra/sandbox/generate.py``) and the bronze schemas the real ingest
writes: ``bronze/crm_contacts`` (HubSpot properties as text), ``bronze/orders`` (SQL rows as
text), ``bronze/web_events`` (landed NDJSON) and ``bronze/enrichment`` (CSV drops), each with the
ingest metadata columns. Per contact: ~1.03 CRM records (re-cased duplicates), ~1.5 orders,
~5 events, ~0.37 enrichment rows; the same kinds of mess as the sandbox (padding, casing,
invalid emails, phone formats, country spellings, "n/a" amounts, duplicate deliveries).

Randomness is a hash of the row index and a salt, so a given ``(contacts, seed)`` always yields
the same rows, and generating 1 M contacts takes seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

REFERENCE_TIME = datetime(2026, 11, 1, tzinfo=UTC)
UTC_US = pl.Datetime("us", "UTC")

FIRST = [
    "Anna",
    "Ben",
    "Chloé",
    "David",
    "Elif",
    "Fatima",
    "Georg",
    "Hannah",
    "Ivan",
    "Jana",
    "Karim",
    "Lena",
    "Mateo",
    "Nora",
    "Oskar",
    "Priya",
    "Quentin",
    "Rosa",
    "Sven",
    "Tomasz",
    "Uma",
    "Viktor",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zoë",
    "Jane",
    "John",
    "María",
    "Jörg",
]
LAST = [
    "Müller",
    "Schmidt",
    "Dubois",
    "Rossi",
    "García",
    "Nowak",
    "Smith",
    "Jones",
    "Kowalski",
    "Novak",
    "Jansen",
    "Larsen",
    "Öztürk",
    "Silva",
    "Tanaka",
    "Nguyen",
    "Okafor",
    "Hansen",
    "Bianchi",
    "Fischer",
    "Weber",
    "Moreau",
    "Doe",
]
ASCII_LAST = [
    "muller",
    "schmidt",
    "dubois",
    "rossi",
    "garcia",
    "nowak",
    "smith",
    "jones",
    "kowalski",
    "novak",
    "jansen",
    "larsen",
    "ozturk",
    "silva",
    "tanaka",
    "nguyen",
    "okafor",
    "hansen",
    "bianchi",
    "fischer",
    "weber",
    "moreau",
    "doe",
]
DOMAINS = [
    "example.com",
    "example.org",
    "example.net",
    "mail.example.com",
    "example.de",
    "example.fr",
    "post.example.co.uk",
    "bücher.example",
]
COUNTRIES = [
    "DE",
    "de",
    "Germany",
    "FR",
    "France",
    "GB",
    "United Kingdom",
    "UK",
    "US",
    "USA",
    "NL",
    "nl",
    "ES",
    "Spain",
    "IT",
    "PL",
    None,
    None,
]
CATEGORIES = ["apparel", "electronics", "home", "beauty", "books", "sports"]
STATUSES = ["paid", "paid", "shipped", "delivered", "delivered", "refunded", "cancelled"]
CURRENCIES = ["EUR"] * 8 + ["USD", "USD", "GBP"]
EVENT_TYPES = (
    ["page_view"] * 11 + ["click"] * 5 + ["add_to_cart", "add_to_cart", "email_open", "email_open"]
)
COMPANIES = ["Acme GmbH", "initech", "Globex Ltd", "Soylent BV", "stark industries", "tyrell corp"]
TITLES = ["Engineer", "Analyst", "CTO", "Founder", "Product Owner", "Student"]
CITIES = ["Berlin", "london", "Paris", "madrid", "Amsterdam", "LYON", "Leeds"]


def rand(index: pl.Expr, salt: int) -> pl.Expr:
    """A deterministic uniform number in [0, 1) per row (a hash of the row index)."""
    return (index.hash(seed=salt) % 1_000_003).cast(pl.Float64) / 1_000_003


def pick(index: pl.Expr, salt: int, values: list[str | None]) -> pl.Expr:
    """One of ``values`` per row, uniformly."""
    position = (index.hash(seed=salt) % len(values)).cast(pl.Int64)
    return pl.lit(pl.Series(values, dtype=pl.String)).gather(position)


def iso(moment: pl.Expr, millis: bool = True) -> pl.Expr:
    return moment.dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ" if millis else "%Y-%m-%dT%H:%M:%SZ")


def before(index: pl.Expr, salt: int, days: int) -> pl.Expr:
    """A moment up to ``days`` days before the reference time."""
    offset = (rand(index, salt) * days * 86_400_000_000).cast(pl.Int64)
    return pl.lit(REFERENCE_TIME).cast(UTC_US) - pl.duration(microseconds=offset)


def messy_email(email: pl.Expr, index: pl.Expr, salt: int, share: float) -> pl.Expr:
    """The email, for ``share`` of rows re-cased or padded with whitespace."""
    roll = rand(index, salt)
    return (
        pl.when(roll < share / 3)
        .then(email.str.to_uppercase())
        .when(roll < 2 * share / 3)
        .then(pl.concat_str([pl.lit("  "), email, pl.lit(" ")]))
        .when(roll < share)
        .then(pl.concat_str([pl.lit("\t"), email.str.to_titlecase()]))
        .otherwise(email)
    )


def people(contacts: int, seed: int, *, start: int = 0) -> pl.DataFrame:
    """One row per person: index (from ``start``), names and canonical email."""
    i = pl.col("person")
    return (
        pl.DataFrame({"person": pl.int_range(start, start + contacts, eager=True)})
        .with_columns(
            pick(i, seed + 1, FIRST).alias("first"),
            (i.hash(seed=seed + 2) % len(LAST)).cast(pl.Int64).alias("_last"),
            pick(i, seed + 3, DOMAINS).alias("domain"),
        )
        .with_columns(
            pl.lit(pl.Series(LAST)).gather(pl.col("_last")).alias("last"),
            pl.concat_str(
                [
                    pl.col("first").str.to_lowercase().str.replace_all("[^a-z]", ""),
                    pl.lit("."),
                    pl.lit(pl.Series(ASCII_LAST)).gather(pl.col("_last")),
                    i.cast(pl.String),
                    pl.lit("@"),
                    pl.col("domain"),
                ]
            ).alias("email"),
        )
        .drop("_last")
    )


def _metadata(frame: pl.DataFrame, source: str, batch: str) -> pl.DataFrame:
    return frame.with_columns(
        pl.lit(REFERENCE_TIME).cast(UTC_US).alias("_ingested_at"),
        pl.lit(f"bench-{batch}").alias("_run_id"),
        pl.lit(f"{source}:{batch}").alias("_batch_id"),
        pl.lit(source).alias("_source"),
    )


def crm_contacts(
    persons: pl.DataFrame, seed: int, *, batch: str = "gen", start: int = 0
) -> pl.DataFrame:
    """HubSpot-style contacts: one record per person plus ~3 % re-cased duplicate records."""
    duplicates = persons.filter(rand(pl.col("person"), seed + 10) < 0.03)
    records = pl.concat([persons, duplicates]).with_row_index("record")
    r = pl.col("record").cast(pl.Int64) + start
    digits = (r.hash(seed=seed + 11) % 10_000_000).cast(pl.String).str.zfill(7)
    phone_kind = (r.hash(seed=seed + 12) % 7).cast(pl.Int64)
    email_roll = rand(r, seed + 13)
    email = (
        pl.when(email_roll < 0.01)
        .then(pl.lit("not-an-email"))
        .when(email_roll < 0.02)
        .then(None)
        .otherwise(messy_email(pl.col("email"), r, seed + 14, 0.25))
    )
    modified = before(r, seed + 15, 120)
    opt_roll = rand(r, seed + 16)
    return _metadata(
        records.select(
            (pl.lit(1000) + r).cast(pl.String).alias("id"),
            email.alias("email"),
            pl.col("first").alias("firstname"),
            pl.col("last").alias("lastname"),
            pl.when(phone_kind == 0)
            .then(pl.concat_str([pl.lit("+49 30 "), digits]))
            .when(phone_kind == 1)
            .then(pl.concat_str([pl.lit("030-"), digits]))
            .when(phone_kind == 2)
            .then(pl.concat_str([pl.lit("0033 1 "), digits]))
            .when(phone_kind == 3)
            .then(pl.concat_str([pl.lit("+44"), digits, pl.lit("0")]))
            .otherwise(None)
            .alias("phone"),
            pick(r, seed + 17, COUNTRIES).alias("country"),
            pl.when(rand(r, seed + 18) < 0.1)
            .then(pl.lit("true"))
            .otherwise(pl.lit("false"))
            .alias("hs_email_optout"),
            pl.when(opt_roll < 0.55)
            .then(pl.lit("true"))
            .when(opt_roll < 0.8)
            .then(pl.lit("false"))
            .otherwise(None)
            .alias("marketing_opt_in"),
            pl.when(opt_roll < 0.55)
            .then(iso(modified - pl.duration(days=30)))
            .otherwise(None)
            .alias("marketing_opt_in_at"),
            iso(modified).alias("lastmodifieddate"),
        ),
        "crm_contacts",
        batch,
    )


def orders(persons: pl.DataFrame, seed: int, *, batch: str = "gen", start: int = 0) -> pl.DataFrame:
    """~1.5 orders per person (40 % none); ~10 % late-updated, ~1 % unusable amounts."""
    p = pl.col("person")
    roll = rand(p, seed + 20)
    count = (
        pl.when(roll < 0.40)
        .then(0)
        .when(roll < 0.68)
        .then(1)
        .when(roll < 0.82)
        .then(2)
        .when(roll < 0.94)
        .then(4)
        .otherwise(7)
    )
    rows = (
        persons.select("person", "email", count.alias("n"))
        .filter(pl.col("n") > 0)
        .with_columns(pl.int_ranges(0, pl.col("n")).alias("k"))
        .explode("k")
        .with_row_index("o")
    )
    o = pl.col("o").cast(pl.Int64) + start
    created = before(o, seed + 21, 365).dt.truncate("1s")
    late = rand(o, seed + 22) < 0.10
    amount_roll = rand(o, seed + 23)
    return _metadata(
        rows.select(
            pl.format("ord_{}", o.cast(pl.String).str.zfill(9)).alias("order_id"),
            messy_email(pl.col("email"), o, seed + 24, 0.3).alias("customer_email"),
            pl.when(amount_roll < 0.005)
            .then(pl.lit("n/a"))
            .when(amount_roll < 0.01)
            .then(pl.format("-{}", (rand(o, seed + 25) * 50).round(2).cast(pl.String)))
            .otherwise((4.5 + rand(o, seed + 25) * 315).round(2).cast(pl.String))
            .alias("amount"),
            pick(o, seed + 26, CURRENCIES).alias("currency"),
            pick(o, seed + 27, CATEGORIES).alias("category"),
            pl.when(late)
            .then(pick(o, seed + 28, STATUSES))
            .otherwise(pl.lit("paid"))
            .alias("status"),
            iso(created, millis=False).alias("created_at"),
            iso(
                pl.when(late).then(created + pl.duration(days=3)).otherwise(created), millis=False
            ).alias("updated_at"),
        ),
        "orders",
        batch,
    )


def web_events(
    persons: pl.DataFrame,
    seed: int,
    *,
    batch: str = "gen",
    start: int = 0,
    anonymous_start: int = 0,
) -> pl.DataFrame:
    """~5 events per person (0-9 each, plus anonymous-only visitors numbered from
    ``anonymous_start``), ~2 % delivered twice."""
    p = pl.col("person")
    known = (
        persons.select(
            "person",
            "email",
            (p.hash(seed=seed + 30) % 10).cast(pl.Int64).alias("n"),
        )
        .filter(pl.col("n") > 0)
        .with_columns(pl.int_ranges(0, pl.col("n")).alias("k"))
        .explode("k")
    )
    anonymous = pl.DataFrame(
        {"person": pl.int_range(persons.height // 2, eager=True) + 10**9 + anonymous_start}
    ).select("person", pl.lit(None, pl.String).alias("email"), pl.lit(0, pl.Int64).alias("k"))
    rows = pl.concat([known.drop("n"), anonymous]).with_row_index("e")
    e = pl.col("e").cast(pl.Int64) + start
    anon = pl.format(
        "anon_{}",
        ((pl.col("person").hash(seed=seed + 31) + pl.col("k") % 2) % 10**12)
        .cast(pl.String)
        .str.zfill(12),
    )
    with_email = pl.col("email").is_not_null() & (rand(e, seed + 32) >= 0.15)
    events = rows.select(
        pl.format("evt_{}", (e.hash(seed=seed + 33)).cast(pl.String)).alias("event_id"),
        pl.when(with_email)
        .then(messy_email(pl.col("email"), e, seed + 34, 0.2))
        .otherwise(None)
        .alias("user_email"),
        anon.alias("anonymous_id"),
        pick(e, seed + 35, EVENT_TYPES).alias("event_type"),
        iso(before(e, seed + 36, 60)).alias("occurred_at"),
        pl.format("https://shop.example.com/item-{}", (e.hash(seed=seed + 37) % 500)).alias("url"),
        pl.lit(f"events-{batch}.ndjson").alias("_landed_file"),
        iso(pl.lit(REFERENCE_TIME).cast(UTC_US)).alias("_landed_at"),
    )
    redelivered = events.filter(rand(pl.col("event_id").hash(), seed + 38) < 0.02)
    return _metadata(pl.concat([events, redelivered]), "web_events", batch)


def enrichment(
    persons: pl.DataFrame, seed: int, *, batch: str = "gen", start: int = 0
) -> pl.DataFrame:
    """Enrichment rows for ~37 % of people (some twice, from two deliveries)."""
    p = pl.col("person")
    chosen = persons.filter(rand(p, seed + 40) < 0.37)
    twice = chosen.filter(rand(pl.col("person"), seed + 41) < 0.05)
    rows = pl.concat([chosen, twice]).with_row_index("x")
    x = pl.col("x").cast(pl.Int64) + start
    return _metadata(
        rows.select(
            messy_email(pl.col("email"), x, seed + 42, 0.3).alias("email"),
            pick(x, seed + 43, COMPANIES).alias("company"),
            pick(x, seed + 44, TITLES).alias("job_title"),
            pick(x, seed + 45, CITIES).alias("city"),
            pick(x, seed + 46, COUNTRIES).alias("country"),
            iso(before(x, seed + 47, 90), millis=False).alias("updated_at"),
            pl.lit(f"enrichment-{batch}.csv").alias("_file"),
        ),
        "enrichment",
        batch,
    )


def bronze_tables(contacts: int, seed: int = 7) -> dict[str, pl.DataFrame]:
    """``bronze/<source>`` frames for ``contacts`` people (the sources of ``pipeline.yaml``)."""
    return bronze_part(people(contacts, seed), seed, start=0)


def bronze_part(persons: pl.DataFrame, seed: int, *, start: int) -> dict[str, pl.DataFrame]:
    """The bronze frames of ``persons``, numbering their rows from ``start``."""
    return {
        "bronze/crm_contacts": crm_contacts(persons, seed, start=start),
        "bronze/orders": orders(persons, seed, start=start),
        "bronze/web_events": web_events(persons, seed, start=start, anonymous_start=start),
        "bronze/enrichment": enrichment(persons, seed, start=start),
    }


def changes(
    persons: pl.DataFrame,
    bronze: dict[str, pl.DataFrame],
    *,
    share: float,
    seed: int,
    start: int | None = None,
) -> dict[str, pl.DataFrame]:
    """What a day brings for ``share`` of the people: CRM edits (a third change email, a third
    opt out, a third rename), new and updated orders, new events, new enrichment rows."""
    chosen = persons.filter(rand(pl.col("person"), seed + 90) < share)
    emails = set(chosen.get_column("email").to_list())
    batch = "day2"
    crm = bronze["bronze/crm_contacts"]
    edited = crm.filter(
        pl.col("email").str.strip_chars().str.to_lowercase().is_in(list(emails))
    ).with_columns(pl.col("id").cast(pl.Int64).alias("_n"))
    kind = pl.col("_n") % 3
    edited = (
        edited.with_columns(
            pl.when(kind == 0)
            .then(pl.concat_str([pl.lit("moved."), pl.col("email").str.strip_chars()]))
            .otherwise(pl.col("email"))
            .alias("email"),
            pl.when(kind == 1)
            .then(pl.lit("true"))
            .otherwise(pl.col("hs_email_optout"))
            .alias("hs_email_optout"),
            pl.when(kind == 2)
            .then(pl.lit("Renamed"))
            .otherwise(pl.col("firstname"))
            .alias("firstname"),
            iso(pl.lit(REFERENCE_TIME).cast(UTC_US) - pl.duration(hours=1)).alias(
                "lastmodifieddate"
            ),
        )
        .drop("_n")
        .pipe(
            lambda f: _metadata(
                f.drop("_ingested_at", "_run_id", "_batch_id", "_source"), "crm_contacts", batch
            )
        )
    )
    old_orders = bronze["bronze/orders"]
    refunded = (
        old_orders.filter(
            pl.col("customer_email").str.strip_chars().str.to_lowercase().is_in(list(emails))
        )
        .with_columns(
            pl.lit("refunded").alias("status"),
            iso(pl.lit(REFERENCE_TIME).cast(UTC_US) - pl.duration(hours=2), millis=False).alias(
                "updated_at"
            ),
        )
        .drop("_ingested_at", "_run_id", "_batch_id", "_source")
        .pipe(_metadata, "orders", batch)
    )
    # New rows are numbered past every existing one (``start``: past every part's).
    new_orders = orders(
        chosen,
        seed + 1000,
        batch=batch,
        start=old_orders.height + 10**8 if start is None else start,
    )
    new_events = web_events(
        chosen,
        seed + 2000,
        batch=batch,
        start=bronze["bronze/web_events"].height + 10**9 if start is None else start,
    )
    return {
        "bronze/crm_contacts": edited,
        "bronze/orders": pl.concat([refunded.head(refunded.height // 2), new_orders]),
        "bronze/web_events": new_events.unique("event_id", keep="first"),
        "bronze/enrichment": enrichment(
            chosen, seed + 3000, batch=batch, start=0 if start is None else start
        ),
    }
