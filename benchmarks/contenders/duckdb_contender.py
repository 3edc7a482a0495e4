"""The DuckDB SQL contender: the computation as SQL over the bronze parquet files, with Python
UDFs only for IDNA, ``phonenumbers`` and HMAC (each applied to distinct values). The helpers
here build the SQL expressions for the project's normalisers."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.contenders.shared import Counts, contact_key_of, e164_of, result_counts
from tasks.core.config import PipelineConfig
from tasks.core.normalise import (
    EMAIL_LOCAL_MAX_BYTES,
    EMAIL_MAX_BYTES,
    EMAIL_PATTERN,
    _idna_domain,
    country_lookup,
)


def _country_table() -> list[tuple[str, str]]:
    return sorted(country_lookup().items())


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
    return result_counts(
        one("SELECT count(*) FROM silver_contacts"),
        one("SELECT count(*) FROM silver_orders"),
        one("SELECT count(*) FROM silver_events"),
        one("SELECT count(*) FROM features"),
        audience,
        float(one("SELECT sum(lifetime_value) FROM features") or 0.0),
    )
