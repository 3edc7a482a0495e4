"""The pandas contender: the computation with vectorised ``.str`` methods, and Python per
distinct value for IDNA, phone numbers and HMAC, as the project does. pandas reads parquet only
through pyarrow or fastparquet, which this project does not install, so polars reads bronze and
hands pandas numpy columns."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from benchmarks.contenders.shared import Counts, contact_key_of, e164_of, result_counts
from tasks.core.config import PipelineConfig
from tasks.core.normalise import (
    EMAIL_LOCAL_MAX_BYTES,
    EMAIL_MAX_BYTES,
    EMAIL_PATTERN,
    _idna_domain,
    country_lookup,
)


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
    return result_counts(
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
