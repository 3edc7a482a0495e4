"""The transform's computation written three other ways, for ``transform_bench``.

Each contender reads the same bronze parquet files, does the same work as the project's full
transform - normalise (emails with IDNA, phones to E.164 with ``phonenumbers``, countries to
ISO alpha-2, names, labels, timestamps, booleans, amounts), drop rows that break the role's
contract, dedupe orders/events/enrichment, link anonymous events, resolve one contact per
email with source-priority survivorship, source ids and current consent, key contacts by
HMAC-SHA256, compute customer features with RFM quintiles, and build the opted-in audience
per segment (priority segments exclusive) - and writes the five result tables.

What they leave out, on purpose, is what the project adds around the computation: pandera
contracts and quarantine records, the staging log that makes the next run incremental, and
Delta MERGEs that write only changes. Values the generator never produces are not handled
(e.g. accented country names, exotic timestamp formats): the project's normalisers handle
them, these contenders only need to agree on the benchmark's data, and ``transform_bench``
prints their row counts side by side to show that they do.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from tasks.core.canonical import NormaliseOptions, to_canonical
from tasks.core.config import PipelineConfig
from tasks.core.entities import (
    dedupe_enrichment,
    dedupe_events,
    dedupe_orders,
    resolve_contacts,
    silver_events,
    silver_orders,
)
from tasks.core.features import customer_features
from tasks.core.normalise import (
    EMAIL_LOCAL_MAX_BYTES,
    EMAIL_MAX_BYTES,
    EMAIL_PATTERN,
    _e164,
    _idna_domain,
    country_lookup,
    is_valid_email,
)
from tasks.core.segments import audience_members

Counts = dict[str, Any]


def _counts(
    contacts: int,
    orders: int,
    events: int,
    features: int,
    audience: dict[str, int],
    lifetime_value: float,
) -> Counts:
    return {
        "contacts": contacts,
        "orders": orders,
        "events": events,
        "features": features,
        "audience": dict(sorted(audience.items())),
        "lifetime_value": round(lifetime_value, 2),
    }


# --- bare polars ------------------------------------------------------------------------------
def bare_polars(
    bronze: dict[str, str], out: Path, config: PipelineConfig, pepper: bytes, as_of: datetime
) -> Counts:
    """The project's pure core functions in one lazy plan, without contracts, staging or Delta.

    ``bronze`` maps a source name to its Delta table path (read with ``pl.scan_delta``).
    """
    settings = config.transform
    options = NormaliseOptions(default_phone_region=settings.default_phone_region)
    rates = settings.currency.to_reporting()

    def role(name: str) -> pl.LazyFrame:
        frames = [
            to_canonical(pl.scan_delta(bronze[source]), spec, source_name=source, options=options)
            for source, spec in config.sources_with_role(name).items()
        ]
        return pl.concat(frames, how="diagonal_relaxed")

    email_ok = is_valid_email(pl.col("email")).fill_null(False)
    contacts = role("contacts").filter(
        pl.col("source_id").is_not_null() & pl.col("updated_at").is_not_null() & email_ok
    )
    enrichment = role("enrichment").filter(pl.col("updated_at").is_not_null() & email_ok)
    orders = role("orders").filter(
        pl.col("order_id").is_not_null()
        & pl.col("updated_at").is_not_null()
        & email_ok
        & (pl.col("amount") >= 0)
        & pl.col("currency").is_in(list(rates))
    )
    events = role("events").filter(
        pl.col("event_id").is_not_null()
        & pl.col("event_type").is_not_null()
        & pl.col("occurred_at").is_not_null()
        & (pl.col("email").is_null() | is_valid_email(pl.col("email")).fill_null(False))
    )
    orders, events, enrichment = (
        dedupe_orders(orders).cache(),
        dedupe_events(events).cache(),
        dedupe_enrichment(enrichment),
    )
    built = pl.collect_all(
        [
            resolve_contacts(
                contacts,
                enrichment,
                orders,
                events,
                identity=settings.identity,
                pepper=pepper,
                key_version=1,
            ),
            silver_orders(orders, rates=rates, pepper=pepper, key_version=1),
            silver_events(events, pepper=pepper, key_version=1),
        ]
    )
    silver_contacts, silver_orders_, silver_events_ = built
    features = customer_features(
        silver_contacts.lazy(),
        silver_orders_.lazy(),
        silver_events_.lazy(),
        as_of=as_of,
        rfm_window_days=settings.features.rfm_window_days,
    ).collect()
    audience = audience_members(features.lazy(), silver_contacts.lazy(), config.segments).collect()
    for name, frame in {
        "contacts": silver_contacts,
        "orders": silver_orders_,
        "events": silver_events_,
        "features": features,
        "audience": audience,
    }.items():
        frame.write_parquet(out / f"{name}.parquet")
    return _counts(
        silver_contacts.height,
        silver_orders_.height,
        silver_events_.height,
        features.height,
        dict(audience.group_by("segment").len().iter_rows()),
        float(features.get_column("lifetime_value").sum()),
    )


# --- shared Python helpers (called once per distinct value) -------------------------------------
def contact_key_of(pepper: bytes) -> Any:
    def key(email: str) -> str:
        return "v1:" + hmac.new(pepper, email.encode("utf-8"), hashlib.sha256).hexdigest()

    return key


def e164_of(region: str) -> Any:
    def e164(raw: str) -> str | None:
        return _e164(raw, region)

    return e164


def _country_table() -> list[tuple[str, str]]:
    return sorted(country_lookup().items())


# --- DuckDB SQL -------------------------------------------------------------------------------
_WS = "' \t\n\r\x0b\x0c'"


def _clean(x: str) -> str:
    """SQL: NFC, whitespace collapsed, trimmed, empty -> NULL (the project's ``clean_text``)."""
    return f"nullif(trim(regexp_replace(nfc_normalize({x}), '\\s+', ' ', 'g')), '')"


def _ts(x: str) -> str:
    return (
        f"try_strptime(trim({x}), ['%Y-%m-%dT%H:%M:%S.%gZ', '%Y-%m-%dT%H:%M:%SZ', "
        "'%Y-%m-%d %H:%M:%S'])"
    )


def _bool(x: str) -> str:
    t = f"lower(trim({x}))"
    return (
        f"CASE WHEN {t} IN ('true','yes','y','1','t') THEN true "
        f"WHEN {t} IN ('false','no','n','0','f') THEN false END"
    )


def _cleaned_email(x: str) -> str:
    return f"nullif(nfc_normalize(lower(trim({x}, {_WS}))), '')"


def _email(alias: str) -> str:
    """SQL: the cleaned email with its domain IDNA-encoded when it has non-ASCII characters."""
    return (
        f"CASE WHEN {alias}_dm.encoded IS NOT NULL THEN regexp_replace({alias}.email_c, "
        f"'@[^@]*$', '') || '@' || {alias}_dm.encoded ELSE {alias}.email_c END"
    )


def _domain_join(alias: str) -> str:
    return (
        f"LEFT JOIN domains {alias}_dm ON {alias}.email_c LIKE '%@%' "
        f"AND {alias}_dm.d = split_part({alias}.email_c, '@', -1)"
    )


def duckdb_sql(
    files: dict[str, list[str]], out: Path, config: PipelineConfig, pepper: bytes, as_of: datetime
) -> Counts:
    """The computation as DuckDB SQL over the bronze parquet files (Python UDFs only for IDNA,
    ``phonenumbers`` and HMAC, each applied to distinct values)."""
    import duckdb

    settings = config.transform
    con = duckdb.connect()

    def udf(name: str, function: Any) -> None:
        # phonenumbers and IDNA may answer "no value": NULL out, NULL in.
        con.create_function(
            name,
            lambda value: None if value is None else function(value),
            ["VARCHAR"],
            "VARCHAR",
            null_handling="special",
        )

    udf("idna_domain", _idna_domain)
    udf("e164", e164_of(settings.default_phone_region.upper()))
    udf("contact_key", contact_key_of(pepper))
    con.execute("CREATE TABLE country_map (key VARCHAR, code VARCHAR)")
    con.executemany("INSERT INTO country_map VALUES (?, ?)", _country_table())
    rates = settings.currency.to_reporting()
    con.execute("CREATE TABLE rates (currency VARCHAR, rate DOUBLE)")
    con.executemany("INSERT INTO rates VALUES (?, ?)", sorted(rates.items()))
    priority = settings.identity.source_priority
    con.execute("CREATE TABLE priority (source VARCHAR, rank INTEGER)")
    con.executemany("INSERT INTO priority VALUES (?, ?)", [(s, i) for i, s in enumerate(priority)])

    def source(name: str) -> str:
        return "read_parquet([" + ", ".join(f"'{f}'" for f in files[name]) + "])"

    def col(spec: Any, field: str) -> str:
        return f'"{spec.column(field)}"'

    parts = {
        role: config.sources_with_role(role)
        for role in ("contacts", "enrichment", "orders", "events")
    }

    def union(role: str, select: Any) -> str:
        return " UNION ALL ".join(
            f"SELECT '{name}' AS _source, {select(spec)} FROM {source(name)}"
            for name, spec in parts[role].items()
        )

    email_valid = (
        f"(regexp_full_match(email, '{EMAIL_PATTERN.strip('^$')}') "
        f"AND strlen(email) <= {EMAIL_MAX_BYTES} "
        f"AND strlen(split_part(email, '@', 1)) <= {EMAIL_LOCAL_MAX_BYTES})"
    )
    country_key = "upper(regexp_replace(trim(replace({x}, '.', '')), '\\s+', ' ', 'g'))"
    sql = f"""
    CREATE TEMP TABLE raw_contacts AS {
        union(
            "contacts",
            lambda s: (
                f'''
        CAST({col(s, "source_id")} AS VARCHAR) AS source_id, {_cleaned_email(col(s, "email"))}
        AS email_c, {_clean(col(s, "first_name"))} AS first_name,
        {_clean(col(s, "last_name"))} AS last_name,
        nullif(trim({col(s, "phone")}), '') AS phone_raw, {col(s, "country")} AS country_raw,
        {_bool(col(s, "opted_in"))} AS opted_in, {_ts(col(s, "opted_in_at"))} AS opted_in_at,
        {_bool(col(s, "opted_out"))} AS opted_out, {_ts(col(s, "updated_at"))} AS updated_at,
        _ingested_at'''
            ),
        )
    };
    CREATE TEMP TABLE raw_enrichment AS {
        union(
            "enrichment",
            lambda s: (
                f'''
        {_cleaned_email(col(s, "email"))} AS email_c, {_clean(col(s, "company"))} AS company,
        {_clean(col(s, "job_title"))} AS job_title, {_clean(col(s, "city"))} AS city,
        {col(s, "country")} AS country_raw, {_ts(col(s, "updated_at"))} AS updated_at,
        _ingested_at'''
            ),
        )
    };
    CREATE TEMP TABLE raw_orders AS {
        union(
            "orders",
            lambda s: (
                f'''
        CAST({col(s, "order_id")} AS VARCHAR) AS order_id,
        {_cleaned_email(col(s, "email"))} AS email_c,
        try_cast(trim({col(s, "amount")}) AS DOUBLE) AS amount,
        replace(replace(upper({_clean(col(s, "currency"))}), '€', 'EUR'), '£', 'GBP')
        AS currency, lower({_clean(col(s, "category"))}) AS category,
        lower({_clean(col(s, "status"))}) AS status, {_ts(col(s, "created_at"))} AS created_at,
        {_ts(col(s, "updated_at"))} AS updated_at, _ingested_at'''
            ),
        )
    };
    CREATE TEMP TABLE raw_events AS {
        union(
            "events",
            lambda s: (
                f'''
        CAST({col(s, "event_id")} AS VARCHAR) AS event_id,
        {_cleaned_email(col(s, "email"))} AS email_c,
        CAST({col(s, "anonymous_id")} AS VARCHAR) AS anonymous_id,
        lower({_clean(col(s, "event_type"))}) AS event_type,
        {_ts(col(s, "occurred_at"))} AS occurred_at, {_clean(col(s, "url"))} AS url,
        _ingested_at'''
            ),
        )
    };

    -- emails: IDNA once per distinct non-ASCII domain
    CREATE TEMP TABLE domains AS
        SELECT d, idna_domain(d) AS encoded FROM (
            SELECT DISTINCT split_part(email_c, '@', -1) AS d FROM (
                SELECT email_c FROM raw_contacts UNION ALL SELECT email_c FROM raw_enrichment
                UNION ALL SELECT email_c FROM raw_orders UNION ALL SELECT email_c FROM raw_events)
            WHERE email_c LIKE '%@%' AND regexp_matches(email_c, '[^\\x00-\\x7F]'));
    CREATE TEMP TABLE phones AS
        SELECT p, e164(p) AS e164 FROM (SELECT DISTINCT phone_raw AS p FROM raw_contacts
                                        WHERE phone_raw IS NOT NULL);

    CREATE TEMP TABLE contacts AS
        SELECT c.* EXCLUDE (email_c, phone_raw, country_raw),
               {_email("c")} AS email, ph.e164 AS phone, cm.code AS country
        FROM raw_contacts c {_domain_join("c")} LEFT JOIN phones ph ON ph.p = c.phone_raw
        LEFT JOIN country_map cm ON cm.key = {country_key.format(x="c.country_raw")};
    DELETE FROM contacts WHERE NOT (source_id IS NOT NULL AND updated_at IS NOT NULL
                                    AND email IS NOT NULL AND {email_valid});
    CREATE TEMP TABLE enrichment_all AS
        SELECT e.* EXCLUDE (email_c, country_raw), {_email("e")} AS email,
               cm.code AS country
        FROM raw_enrichment e {_domain_join("e")}
        LEFT JOIN country_map cm ON cm.key = {country_key.format(x="e.country_raw")};
    DELETE FROM enrichment_all WHERE NOT (updated_at IS NOT NULL AND email IS NOT NULL
                                          AND {email_valid});
    CREATE TEMP TABLE orders_all AS
        SELECT o.* EXCLUDE (email_c), {_email("o")} AS email FROM raw_orders o
        {_domain_join("o")};
    DELETE FROM orders_all WHERE NOT (order_id IS NOT NULL AND updated_at IS NOT NULL
        AND email IS NOT NULL AND {email_valid} AND amount IS NOT NULL AND isfinite(amount)
        AND amount >= 0 AND currency IN (SELECT currency FROM rates));
    CREATE TEMP TABLE events_all AS
        SELECT ev.* EXCLUDE (email_c), {_email("ev")} AS email FROM raw_events ev
        {_domain_join("ev")};
    DELETE FROM events_all WHERE NOT (event_id IS NOT NULL AND event_type IS NOT NULL
        AND occurred_at IS NOT NULL AND (email IS NULL OR {email_valid}));

    -- dedupe
    CREATE TEMP TABLE orders AS SELECT * EXCLUDE (rn) FROM (
        SELECT *, row_number() OVER (PARTITION BY order_id ORDER BY updated_at DESC NULLS LAST,
            _ingested_at DESC NULLS LAST, status, amount, currency, email, category, _source) rn
        FROM orders_all) WHERE rn = 1;
    CREATE TEMP TABLE events_d AS SELECT * EXCLUDE (rn) FROM (
        SELECT *, row_number() OVER (PARTITION BY event_id ORDER BY _ingested_at NULLS LAST,
            occurred_at NULLS LAST, email NULLS LAST, anonymous_id NULLS LAST) rn
        FROM events_all) WHERE rn = 1;
    CREATE TEMP TABLE enrichment AS SELECT * EXCLUDE (rn) FROM (
        SELECT *, row_number() OVER (PARTITION BY email ORDER BY updated_at DESC NULLS LAST,
            _ingested_at DESC NULLS LAST, _source, company, job_title, city, country) rn
        FROM enrichment_all) WHERE rn = 1;

    -- events linked to people (own email, else an anonymous id seen with exactly one email)
    CREATE TEMP TABLE links AS
        SELECT _source, anonymous_id, min(email) AS linked FROM events_d
        WHERE email IS NOT NULL AND anonymous_id IS NOT NULL
        GROUP BY ALL HAVING count(DISTINCT email) = 1;
    CREATE TEMP TABLE events AS
        SELECT e.*, coalesce(e.email, l.linked) AS person,
               CASE WHEN e.email IS NOT NULL THEN 'email'
                    WHEN l.linked IS NOT NULL THEN 'anonymous_id' END AS linked_by
        FROM events_d e LEFT JOIN links l USING (_source, anonymous_id);

    CREATE TEMP TABLE keys AS
        SELECT email, contact_key(email) AS contact_key FROM (
            SELECT email FROM contacts UNION SELECT email FROM enrichment
            UNION SELECT email FROM orders UNION SELECT person FROM events
            WHERE person IS NOT NULL);

    -- identity records and survivorship
    CREATE TEMP TABLE records AS
        SELECT email, _source, source_id AS record_id, updated_at, first_name, last_name, phone,
               country, NULL::VARCHAR AS company, NULL::VARCHAR AS job_title,
               NULL::VARCHAR AS city FROM contacts
        UNION ALL SELECT email, _source, 'email', updated_at, NULL, NULL, NULL, country,
               company, job_title, city FROM enrichment
        UNION ALL SELECT email, _source, 'email', max(updated_at), NULL, NULL, NULL, NULL, NULL,
               NULL, NULL FROM orders GROUP BY email, _source
        UNION ALL SELECT email, _source, 'email', max(occurred_at), NULL, NULL, NULL, NULL, NULL,
               NULL, NULL FROM events_d WHERE email IS NOT NULL GROUP BY email, _source;
    CREATE TEMP TABLE ranked AS
        SELECT r.*, coalesce(p.rank, {len(priority)}) AS prio FROM records r
        LEFT JOIN priority p ON p.source = r._source;
    CREATE TEMP TABLE consent AS SELECT email, status AS consent_status, stated_at AS consent_at,
        _source AS consent_source FROM (
        SELECT *, row_number() OVER (PARTITION BY email ORDER BY stated_at DESC,
            status = 'subscribed', _source) rn FROM (
            SELECT email, _source,
                CASE WHEN coalesce(opted_out, false) THEN 'unsubscribed'
                     WHEN coalesce(opted_in, false) THEN 'subscribed' END AS status,
                CASE WHEN NOT coalesce(opted_out, false) AND coalesce(opted_in, false)
                     THEN coalesce(opted_in_at, updated_at) ELSE updated_at END AS stated_at
            FROM contacts) WHERE status IS NOT NULL) WHERE rn = 1;
    CREATE TEMP TABLE silver_contacts AS
        SELECT k.contact_key, p.*, coalesce(c.consent_status, 'unknown') AS consent_status,
               c.consent_at, c.consent_source
        FROM (SELECT email,
            {
        ", ".join(
            f"first({a} ORDER BY prio, updated_at DESC NULLS LAST, _source, record_id) "
            f"FILTER (WHERE {a} IS NOT NULL) AS {a}"
            for a in ("first_name", "last_name", "phone", "country", "company", "job_title", "city")
        )
    },
            max(updated_at) AS updated_at,
            list_sort(list_distinct(list(_source || ':' || record_id))) AS source_ids,
            count(*) AS record_count
            FROM ranked GROUP BY email) p
        JOIN keys k USING (email) LEFT JOIN consent c USING (email);
    UPDATE silver_contacts s SET source_ids = list_sort(list_distinct(
        list_concat(s.source_ids, a.ids))) FROM (
        SELECT linked AS email, list(_source || ':' || anonymous_id) AS ids FROM links
        GROUP BY linked) a WHERE a.email = s.email;

    CREATE TEMP TABLE silver_orders AS
        SELECT o.order_id, k.contact_key, o.amount, o.currency, r.rate AS fx_rate,
               o.amount * r.rate AS amount_reporting, o.category, o.status,
               coalesce(o.created_at, o.updated_at) AS created_at, o.updated_at, o._source
        FROM orders o JOIN keys k USING (email) JOIN rates r USING (currency);
    CREATE TEMP TABLE silver_events AS
        SELECT e.event_id, k.contact_key, e.anonymous_id, e.event_type, e.occurred_at, e.url,
               e.linked_by, e._source
        FROM events e LEFT JOIN keys k ON k.email = e.person;

    -- features
    CREATE TEMP TABLE counted AS SELECT * FROM silver_orders
        WHERE coalesce(status, '') NOT IN ('cancelled', 'canceled', 'refunded', 'void')
          AND created_at <= TIMESTAMP '{as_of:%Y-%m-%d %H:%M:%S}';
    CREATE TEMP TABLE favourite AS SELECT contact_key, category AS favourite_category FROM (
        SELECT contact_key, category, row_number() OVER (PARTITION BY contact_key
            ORDER BY count(*) DESC, sum(amount_reporting::DECIMAL(38,6)) DESC, category) rn
        FROM counted WHERE category IS NOT NULL GROUP BY contact_key, category) WHERE rn = 1;
    CREATE TEMP TABLE metrics AS
        SELECT c.contact_key, c.country, coalesce(o.order_count, 0) AS order_count,
            round(coalesce(o.lifetime_value, 0), 2) AS lifetime_value, o.first_order_at,
            o.last_order_at, coalesce(o.frequency, 0) AS frequency,
            round(coalesce(o.monetary, 0), 2) AS monetary, f.favourite_category,
            coalesce(ev.events_30d, 0) AS events_30d, coalesce(ev.events_90d, 0) AS events_90d,
            greatest(o.last_order_at, ev.last_event_at) AS last_activity_at
        FROM silver_contacts c
        LEFT JOIN (SELECT contact_key, count(*) AS order_count,
            sum(amount_reporting::DECIMAL(38,6))::DOUBLE AS lifetime_value,
            min(created_at) AS first_order_at, max(created_at) AS last_order_at,
            count(*) FILTER (WHERE created_at > TIMESTAMP '{as_of:%Y-%m-%d %H:%M:%S}'
                - INTERVAL {settings.features.rfm_window_days} DAY) AS frequency,
            coalesce(sum(amount_reporting::DECIMAL(38,6)) FILTER (WHERE created_at >
                TIMESTAMP '{as_of:%Y-%m-%d %H:%M:%S}'
                - INTERVAL {settings.features.rfm_window_days} DAY), 0)::DOUBLE AS monetary
            FROM counted GROUP BY contact_key) o USING (contact_key)
        LEFT JOIN favourite f USING (contact_key)
        LEFT JOIN (SELECT contact_key,
            count(*) FILTER (WHERE occurred_at > TIMESTAMP '{as_of:%Y-%m-%d %H:%M:%S}'
                - INTERVAL 30 DAY) AS events_30d,
            count(*) FILTER (WHERE occurred_at > TIMESTAMP '{as_of:%Y-%m-%d %H:%M:%S}'
                - INTERVAL 90 DAY) AS events_90d,
            max(occurred_at) AS last_event_at
            FROM silver_events WHERE contact_key IS NOT NULL
              AND occurred_at <= TIMESTAMP '{as_of:%Y-%m-%d %H:%M:%S}'
            GROUP BY contact_key) ev USING (contact_key);
    CREATE TEMP TABLE features AS
        WITH m AS (SELECT *,
            CASE WHEN order_count > 0 THEN round(lifetime_value / order_count, 2) END
                AS avg_order_value,
            (epoch_us(TIMESTAMP '{as_of:%Y-%m-%d %H:%M:%S}') - epoch_us(last_order_at))
                // 86400000000 AS recency_days,
            (epoch_us(TIMESTAMP '{as_of:%Y-%m-%d %H:%M:%S}') - epoch_us(last_activity_at))
                // 86400000000 AS days_since_last_activity FROM metrics),
        s AS (SELECT * FROM m WHERE frequency > 0),
        n AS (SELECT count(*) AS n FROM s),
        -- average rank of each distinct value: rows before it + (its count + 1) / 2
        r AS (SELECT recency_days, sum(c) OVER (ORDER BY recency_days DESC) - c + (c + 1) / 2.0
              AS rank FROM (SELECT recency_days, count(*) c FROM s GROUP BY ALL)),
        f AS (SELECT frequency, sum(c) OVER (ORDER BY frequency) - c + (c + 1) / 2.0 AS rank
              FROM (SELECT frequency, count(*) c FROM s GROUP BY ALL)),
        mo AS (SELECT monetary, sum(c) OVER (ORDER BY monetary) - c + (c + 1) / 2.0 AS rank
               FROM (SELECT monetary, count(*) c FROM s GROUP BY ALL))
        SELECT m.*,
            CASE WHEN m.frequency > 0 THEN least(greatest(floor(5 * (r.rank - 0.5) / n.n) + 1,
                1), 5) END AS r_score,
            CASE WHEN m.frequency > 0 THEN least(greatest(floor(5 * (f.rank - 0.5) / n.n) + 1,
                1), 5) END AS f_score,
            CASE WHEN m.frequency > 0 THEN least(greatest(floor(5 * (mo.rank - 0.5) / n.n) + 1,
                1), 5) END AS m_score
        FROM m CROSS JOIN n
        LEFT JOIN r ON r.recency_days = m.recency_days
        LEFT JOIN f ON f.frequency = m.frequency
        LEFT JOIN mo ON mo.monetary = m.monetary;
    """
    con.execute(sql)
    ordered = sorted(config.segments, key=lambda s: (s.priority is None, s.priority or 0))
    flags = ", ".join(f"coalesce(({s.where}), false) AS m{i}" for i, s in enumerate(ordered))
    con.execute(f"CREATE TEMP TABLE matches AS SELECT contact_key, {flags} FROM features")
    segment_sql = []
    taken: list[str] = []
    for i, segment in enumerate(ordered):
        where = f"m.m{i}"
        if segment.priority is not None:  # exclusive: not in a higher-priority segment
            where = " AND ".join([where, *(f"NOT m.{t}" for t in taken)])
            taken.append(f"m{i}")
        segment_sql.append(
            f"SELECT '{segment.name}' AS segment, f.contact_key, c.email, c.first_name, "
            f"c.last_name, c.phone, f.country, c.consent_status, c.consent_at FROM features f "
            f"JOIN matches m USING (contact_key) JOIN silver_contacts c USING (contact_key) "
            f"WHERE c.consent_status = 'subscribed' AND {where}"
        )
    con.execute("CREATE TEMP TABLE audience AS " + " UNION ALL ".join(segment_sql))
    for name, table in {
        "contacts": "silver_contacts",
        "orders": "silver_orders",
        "events": "silver_events",
        "features": "features",
        "audience": "audience",
    }.items():
        con.execute(f"COPY {table} TO '{out / f'{name}.parquet'}' (FORMAT parquet)")

    def one(query: str) -> Any:
        row = con.execute(query).fetchone()
        return None if row is None else row[0]

    audience = dict(con.execute("SELECT segment, count(*) FROM audience GROUP BY 1").fetchall())
    return _counts(
        one("SELECT count(*) FROM silver_contacts"),
        one("SELECT count(*) FROM silver_orders"),
        one("SELECT count(*) FROM silver_events"),
        one("SELECT count(*) FROM features"),
        audience,
        float(one("SELECT sum(lifetime_value) FROM features") or 0.0),
    )


# --- pandas -----------------------------------------------------------------------------------
def pandas_frames(bronze: dict[str, str]) -> dict[str, Any]:
    """Bronze as pandas DataFrames. pandas reads parquet only through pyarrow or fastparquet,
    which this project does not install, so polars reads the files and hands pandas numpy
    columns (counted in pandas' time)."""
    import pandas as pd

    frames = {}
    for name, path in bronze.items():
        df = pl.read_delta(path)
        frames[name] = pd.DataFrame({c: df.get_column(c).to_numpy() for c in df.columns})
    return frames


def _pd_map_distinct(series: Any, function: Any) -> Any:
    uniques = series.dropna().unique()
    return series.map(dict(zip(uniques, map(function, uniques), strict=True)))


def _pd_clean(series: Any) -> Any:
    out = series.str.normalize("NFC").str.replace(r"\s+", " ", regex=True).str.strip()
    return out.where(out.str.len() > 0)


def _pd_email(series: Any) -> Any:
    import pandas as pd

    cleaned = series.str.strip().str.lower().str.normalize("NFC")
    cleaned = cleaned.where(cleaned.str.len() > 0)
    domain = cleaned.str.extract(r"@([^@]*)$", expand=False)
    local = cleaned.str.extract(r"^(.*)@[^@]*$", expand=False)
    non_ascii = domain.str.contains(r"[^\x00-\x7f]", regex=True).fillna(False).astype(bool)
    encoded = _pd_map_distinct(domain.where(non_ascii), _idna_domain)
    return pd.Series(
        cleaned.where(~non_ascii, local + "@" + encoded), index=series.index, dtype=object
    )


def _pd_ts(series: Any) -> Any:
    import pandas as pd

    return pd.to_datetime(series.str.strip(), format="ISO8601", utc=True, errors="coerce")


def _pd_bool(series: Any) -> Any:
    text = series.str.strip().str.lower()
    return text.map(
        {
            **dict.fromkeys(["true", "yes", "y", "1", "t"], True),
            **dict.fromkeys(["false", "no", "n", "0", "f"], False),
        }
    )


def _pd_country(series: Any, lookup: dict[str, str]) -> Any:
    key = series.str.replace(".", "", regex=False).str.upper().str.split().str.join(" ")
    return key.map(lookup)


def _pd_email_ok(series: Any) -> Any:
    ok = series.str.fullmatch(EMAIL_PATTERN.strip("^$")).fillna(False).astype(bool)
    local = series.str.extract(r"^(.*)@[^@]*$", expand=False)
    ok &= series.str.encode("utf-8").str.len().fillna(0) <= EMAIL_MAX_BYTES
    ok &= local.str.encode("utf-8").str.len().fillna(0) <= EMAIL_LOCAL_MAX_BYTES
    return ok.astype(bool)


def pandas_transform(
    bronze: dict[str, str], out: Path, config: PipelineConfig, pepper: bytes, as_of: datetime
) -> Counts:
    """The computation in pandas (vectorised ``.str`` methods; Python per distinct value for
    IDNA, phone numbers and HMAC, as the project does)."""
    import numpy as np
    import pandas as pd

    settings = config.transform
    raw = pandas_frames(bronze)
    lookup = country_lookup()
    key_of = contact_key_of(pepper)
    e164 = e164_of(settings.default_phone_region.upper())
    rates = settings.currency.to_reporting()

    def role(name: str, build: Any) -> Any:
        return pd.concat(
            [
                build(raw[src], spec).assign(_source=src)
                for src, spec in config.sources_with_role(name).items()
            ],
            ignore_index=True,
        )

    contacts = role(
        "contacts",
        lambda df, s: pd.DataFrame(
            {
                "source_id": df[s.column("source_id")].astype(object),
                "email": _pd_email(df[s.column("email")]),
                "first_name": _pd_clean(df[s.column("first_name")]),
                "last_name": _pd_clean(df[s.column("last_name")]),
                "phone": _pd_map_distinct(
                    df[s.column("phone")].str.strip().replace("", None), e164
                ),
                "country": _pd_country(df[s.column("country")], lookup),
                "opted_in": _pd_bool(df[s.column("opted_in")]),
                "opted_in_at": _pd_ts(df[s.column("opted_in_at")]),
                "opted_out": _pd_bool(df[s.column("opted_out")]),
                "updated_at": _pd_ts(df[s.column("updated_at")]),
                "_ingested_at": df["_ingested_at"],
            }
        ),
    )
    contacts = contacts[
        contacts.source_id.notna() & contacts.updated_at.notna() & _pd_email_ok(contacts.email)
    ]
    enrichment = role(
        "enrichment",
        lambda df, s: pd.DataFrame(
            {
                "email": _pd_email(df[s.column("email")]),
                "company": _pd_clean(df[s.column("company")]),
                "job_title": _pd_clean(df[s.column("job_title")]),
                "city": _pd_clean(df[s.column("city")]),
                "country": _pd_country(df[s.column("country")], lookup),
                "updated_at": _pd_ts(df[s.column("updated_at")]),
                "_ingested_at": df["_ingested_at"],
            }
        ),
    )
    enrichment = enrichment[enrichment.updated_at.notna() & _pd_email_ok(enrichment.email)]
    orders = role(
        "orders",
        lambda df, s: pd.DataFrame(
            {
                "order_id": df[s.column("order_id")].astype(object),
                "email": _pd_email(df[s.column("email")]),
                "amount": pd.to_numeric(df[s.column("amount")].str.strip(), errors="coerce"),
                "currency": _pd_clean(df[s.column("currency")])
                .str.upper()
                .replace({"€": "EUR", "£": "GBP"}),
                "category": _pd_clean(df[s.column("category")].str.lower()),
                "status": _pd_clean(df[s.column("status")].str.lower()),
                "created_at": _pd_ts(df[s.column("created_at")]),
                "updated_at": _pd_ts(df[s.column("updated_at")]),
                "_ingested_at": df["_ingested_at"],
            }
        ),
    )
    orders = orders[
        orders.order_id.notna()
        & orders.updated_at.notna()
        & _pd_email_ok(orders.email)
        & np.isfinite(orders.amount)
        & (orders.amount >= 0)
        & orders.currency.isin(list(rates))
    ]
    events = role(
        "events",
        lambda df, s: pd.DataFrame(
            {
                "event_id": df[s.column("event_id")].astype(object),
                "email": _pd_email(df[s.column("email")]),
                "anonymous_id": df[s.column("anonymous_id")].astype(object),
                "event_type": _pd_clean(df[s.column("event_type")].str.lower()),
                "occurred_at": _pd_ts(df[s.column("occurred_at")]),
                "url": _pd_clean(df[s.column("url")]),
                "_ingested_at": df["_ingested_at"],
            }
        ),
    )
    events = events[
        events.event_id.notna()
        & events.event_type.notna()
        & events.occurred_at.notna()
        & (events.email.isna() | _pd_email_ok(events.email))
    ]

    orders = orders.sort_values(
        [
            "order_id",
            "updated_at",
            "_ingested_at",
            "status",
            "amount",
            "currency",
            "email",
            "category",
            "_source",
        ],
        ascending=[True, False, False, True, True, True, True, True, True],
        na_position="last",
        kind="stable",
    ).drop_duplicates("order_id")
    events = events.sort_values(
        ["event_id", "_ingested_at", "occurred_at", "email", "anonymous_id"],
        na_position="last",
        kind="stable",
    ).drop_duplicates("event_id")
    enrichment = enrichment.sort_values(
        [
            "email",
            "updated_at",
            "_ingested_at",
            "_source",
            "company",
            "job_title",
            "city",
            "country",
        ],
        ascending=[True, False, False, True, True, True, True, True],
        na_position="last",
        kind="stable",
    ).drop_duplicates("email")

    seen = events[events.email.notna() & events.anonymous_id.notna()]
    per_anon = seen.groupby(["_source", "anonymous_id"]).email.agg(["nunique", "first"])
    links = per_anon[per_anon["nunique"] == 1]["first"].rename("linked").reset_index()
    events = events.merge(links, on=["_source", "anonymous_id"], how="left")
    events["linked_by"] = np.where(
        events.email.notna(), "email", np.where(events.linked.notna(), "anonymous_id", None)
    )
    events["person"] = events.email.fillna(events.linked)

    people = pd.concat([contacts.email, enrichment.email, orders.email, events.person]).dropna()
    keys = pd.Series({e: key_of(e) for e in people.unique()}, dtype=object)

    attributes = ["first_name", "last_name", "phone", "country", "company", "job_title", "city"]
    customers = orders.groupby(["email", "_source"], as_index=False).updated_at.max()
    users = (
        events[events.email.notna()]
        .groupby(["email", "_source"], as_index=False)
        .occurred_at.max()
        .rename(columns={"occurred_at": "updated_at"})
    )
    records = pd.concat(
        [
            contacts.assign(record_id=contacts.source_id),
            enrichment.assign(record_id="email"),
            customers.assign(record_id="email"),
            users.assign(record_id="email"),
        ],
        ignore_index=True,
    ).reindex(columns=["email", "_source", "record_id", "updated_at", *attributes])
    priority = {s: i for i, s in enumerate(settings.identity.source_priority)}
    records["prio"] = records._source.map(priority).fillna(len(priority))
    records = records.sort_values(
        ["email", "prio", "updated_at", "_source", "record_id"],
        ascending=[True, True, False, True, True],
        na_position="last",
        kind="stable",
    )
    grouped = records.groupby("email", sort=True)
    silver = grouped[attributes].first()
    silver["updated_at"] = grouped.updated_at.max()
    silver["record_count"] = grouped.size()
    records["sid"] = records._source + ":" + records.record_id.astype(str)
    anon_ids = links.assign(sid=links._source + ":" + links.anonymous_id)
    ids = pd.concat([records[["email", "sid"]], anon_ids.rename(columns={"linked": "email"})])
    silver["source_ids"] = ids.groupby("email").sid.agg(lambda s: sorted(set(s)))
    stated = contacts.assign(
        consent_status=np.where(
            contacts.opted_out.fillna(False).astype(bool),
            "unsubscribed",
            np.where(contacts.opted_in.fillna(False).astype(bool), "subscribed", None),
        )
    )
    stated = stated[stated.consent_status.notna()]
    stated["consent_at"] = stated.updated_at.where(
        stated.consent_status != "subscribed", stated.opted_in_at.fillna(stated.updated_at)
    )
    stated["optin"] = stated.consent_status == "subscribed"
    consent = (
        stated.sort_values(
            ["email", "consent_at", "optin", "_source"],
            ascending=[True, False, True, True],
            kind="stable",
        )
        .drop_duplicates("email")
        .set_index("email")[["consent_status", "consent_at", "_source"]]
        .rename(columns={"_source": "consent_source"})
    )
    silver = silver.join(consent, how="left")
    silver["consent_status"] = silver.consent_status.fillna("unknown")
    silver["contact_key"] = keys.reindex(silver.index).to_numpy()
    silver = silver.reset_index()

    orders["contact_key"] = orders.email.map(keys)
    orders["fx_rate"] = orders.currency.map(rates)
    orders["amount_reporting"] = orders.amount * orders.fx_rate
    orders["created_at"] = orders.created_at.fillna(orders.updated_at)
    events["contact_key"] = events.person.map(keys)

    as_of_ts = pd.Timestamp(as_of)
    counted = orders[
        ~orders.status.fillna("").isin(["cancelled", "canceled", "refunded", "void"])
        & (orders.created_at <= as_of_ts)
    ]
    window = counted.created_at > as_of_ts - pd.Timedelta(days=settings.features.rfm_window_days)
    cents = (counted.amount_reporting * 1_000_000).round().astype("int64")  # exact sums
    stats = (
        counted.assign(cents=cents, w_cents=cents.where(window, 0), w=window)
        .groupby("contact_key")
        .agg(
            order_count=("order_id", "size"),
            cents=("cents", "sum"),
            w_cents=("w_cents", "sum"),
            first_order_at=("created_at", "min"),
            last_order_at=("created_at", "max"),
            frequency=("w", "sum"),
        )
    )
    stats["lifetime_value"] = stats.cents / 1_000_000
    stats["monetary"] = stats.w_cents / 1_000_000
    fav = (
        counted[counted.category.notna()]
        .assign(cents=cents)
        .groupby(["contact_key", "category"], as_index=False)
        .agg(n=("order_id", "size"), spend=("cents", "sum"))
        .sort_values(
            ["contact_key", "n", "spend", "category"],
            ascending=[True, False, False, True],
            kind="stable",
        )
        .drop_duplicates("contact_key")
        .set_index("contact_key")["category"]
        .rename("favourite_category")
    )
    linked = events[events.contact_key.notna() & (events.occurred_at <= as_of_ts)]
    engagement = (
        linked.assign(
            e30=linked.occurred_at > as_of_ts - pd.Timedelta(days=30),
            e90=linked.occurred_at > as_of_ts - pd.Timedelta(days=90),
        )
        .groupby("contact_key")
        .agg(
            events_30d=("e30", "sum"),
            events_90d=("e90", "sum"),
            last_event_at=("occurred_at", "max"),
        )
    )
    features = (
        silver[["contact_key", "country"]]
        .set_index("contact_key")
        .join(stats.drop(columns=["cents", "w_cents"]))
        .join(fav)
        .join(engagement)
    )
    for column in ("order_count", "frequency", "events_30d", "events_90d"):
        features[column] = features[column].fillna(0).astype("int64")
    for column in ("lifetime_value", "monetary"):
        features[column] = features[column].fillna(0.0).round(2)
    features["last_activity_at"] = features[["last_order_at", "last_event_at"]].max(axis=1)
    features["avg_order_value"] = (
        (features.lifetime_value / features.order_count).round(2).where(features.order_count > 0)
    )
    features["recency_days"] = (as_of_ts - features.last_order_at).dt.days
    features["days_since_last_activity"] = (as_of_ts - features.last_activity_at).dt.days
    scored = features.frequency > 0
    n = scored.sum()

    def quintile(values: Any, *, descending: bool = False) -> Any:
        rank = values.where(scored).rank(method="average", ascending=not descending)
        return (np.floor((rank - 0.5) * 5 / n) + 1).clip(1, 5)

    features["r_score"] = quintile(features.recency_days, descending=True)
    features["f_score"] = quintile(features.frequency)
    features["m_score"] = quintile(features.monetary)
    features = features.drop(columns=["last_event_at"]).reset_index()

    subscribed = silver[silver.consent_status == "subscribed"]
    base = features.merge(
        subscribed[
            [
                "contact_key",
                "email",
                "first_name",
                "last_name",
                "phone",
                "consent_status",
                "consent_at",
            ]
        ],
        on="contact_key",
    )
    frames, taken = [], pd.Series(False, index=base.index)
    for segment in sorted(config.segments, key=lambda s: (s.priority is None, s.priority or 0)):
        match = _pd_segment(base, segment.where)
        member = match & ~taken if segment.priority is not None else match
        if segment.priority is not None:
            taken |= match
        frames.append(base[member].assign(segment=segment.name))
    audience = pd.concat(frames, ignore_index=True)

    for name, frame in {
        "contacts": silver,
        "orders": orders,
        "events": events,
        "features": features,
        "audience": audience,
    }.items():
        frame.to_pickle(out / f"{name}.pkl")
    return _counts(
        len(silver),
        len(orders),
        len(events),
        len(features),
        audience.groupby("segment").size().to_dict(),
        float(features.lifetime_value.sum()),
    )


def _pd_segment(frame: Any, where: str) -> Any:
    """A pipeline.yaml segment predicate evaluated by pandas (its SQL subset: AND, comparisons,
    IS [NOT] NULL); nulls never match, as in the project."""
    import re

    expression = re.sub(r"(\w+) IS NOT NULL", r"\1 == \1", where)  # NaN/NaT != itself
    expression = re.sub(r"(\w+) IS NULL", r"\1 != \1", expression)
    expression = re.sub(r"(?<![<>!=])=(?!=)", "==", expression)
    expression = expression.replace(" AND ", " & ").replace(" OR ", " | ")
    parts = [f"({p.strip()})" for p in expression.split("&")]
    return frame.eval(" & ".join(parts), engine="python").fillna(False).astype(bool)


def normalised(text: str) -> str:
    """NFC (used by the checks in the benchmark)."""
    return unicodedata.normalize("NFC", text)
