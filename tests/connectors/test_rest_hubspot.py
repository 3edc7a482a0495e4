"""The ``hubspot_contacts`` preset of the REST source against the loopback CRM stand-in:
same rows as the dedicated reader, incremental, keyset paging that loses nothing to contacts
modified mid-run, ties wider than a page, more than the 10k search window, token expiry,
429/5xx handling, and the proactive budget keeping the observed rate under the limit."""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from infra.sandbox._http import Request, Response
from infra.sandbox.crm import CrmStandIn
from infra.sandbox.generate import build_crm, iso_millis
from tasks.connectors.http import RetryPolicy
from tasks.connectors.lake import Lake
from tasks.connectors.sources.rest import RestReader
from tasks.core.config import parse_pipeline
from tasks.core.config_rest import RestSource
from tasks.errors import SourceError
from tasks.ingest import committed_watermark

PROPS = ["email", "firstname", "lastmodifieddate"]


class Sleeps:
    """A RetryPolicy sleep that records instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class ObservedCrm(CrmStandIn):
    """The CRM stand-in, plus the arrival time and status of every API request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.observed: list[tuple[float, int]] = []
        self._observed_lock = threading.Lock()

    def dispatch(self, request: Request) -> Response:
        arrived = time.monotonic()
        response = super().dispatch(request)
        if request.path != "/oauth/v1/token":
            with self._observed_lock:
                self.observed.append((arrived, response.status))
        return response

    def max_in_any_second(self) -> int:
        times = sorted(t for t, status in self.observed if status != 429)
        return max(
            (sum(1 for u in times if t <= u < t + 1.0) for t in times),
            default=0,
        )


@pytest.fixture
def crm() -> Iterator[ObservedCrm]:
    records, _people, _dups = build_crm(random.Random(3), 450)
    with ObservedCrm(records, client_id="cid", client_secret="secret") as server:
        yield server


@pytest.fixture(autouse=True)
def crm_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_CRM_SECRET", "secret")


def preset(url: str, extra: str = "", options: str = "", rps: str = "null") -> RestSource:
    text = f"""
sources:
  crm:
    kind: rest
    role: contacts
    preset: hubspot_contacts
    base_url: {url}
    auth: {{type: oauth2_client_credentials, token_url: /oauth/v1/token, client_id: cid,
            client_secret: {{secret: crm_secret}}}}
    options: {{properties: [email, firstname]{options}}}
    budget: {{requests_per_second: {rps}}}
{extra}
"""
    source = parse_pipeline(text, env={}).sources["crm"]
    assert isinstance(source, RestSource)
    return source


def reader(config: RestSource, **kwargs: Any) -> RestReader:
    policy = kwargs.pop("policy", RetryPolicy(sleep=Sleeps(), rng=random.Random(0)))
    return RestReader(config, source_name="crm", policy=policy, **kwargs)


def rows(r: RestReader, since: str | None = None) -> pl.DataFrame:
    try:
        return pl.concat([b.frame for b in r.batches(since=since, is_committed=lambda _b: False)])
    finally:
        r.close()


def api_requests(crm: CrmStandIn) -> int:
    return sum(1 for _m, path in crm.requests if path != "/oauth/v1/token")


def test_preset_reads_every_contact_once_as_the_crm_holds_it(crm: ObservedCrm) -> None:
    r = reader(preset(crm.url))
    df = rows(r)
    assert df.height == len(crm.contacts()) and df["id"].n_unique() == df.height
    assert r.stats.pages == 5
    assert df.columns == ["id", "email", "firstname", "lastmodifieddate"]
    expected = {c["id"]: tuple(c["properties"].get(p) for p in PROPS) for c in crm.contacts()}
    got = {row[0]: tuple(row[1:]) for row in df.iter_rows()}
    assert got == expected


def test_incremental_reads_only_the_tail_after_the_watermark(crm: ObservedCrm) -> None:
    full = rows(reader(preset(crm.url)))
    watermark = str(full["lastmodifieddate"].max())
    changed = crm.upsert_contact({"email": "new.person@example.com", "firstname": "New"})
    tail = rows(reader(preset(crm.url, options=", overlap_seconds: 0")), since=watermark)
    assert changed["id"] in tail["id"].to_list()
    assert tail.height < 10  # the boundary row(s) and the change, not the whole table
    with_overlap = rows(reader(preset(crm.url)), since=watermark)  # default 300 s overlap
    assert with_overlap.height >= tail.height


def test_overlap_rereads_are_absorbed_by_the_merge(crm: ObservedCrm, tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    for batch in reader(preset(crm.url)).batches(since=None, is_committed=lambda _b: False):
        lake.merge("bronze/crm", batch.frame, keys=["id"])
    before = lake.read("bronze/crm")
    watermark = committed_watermark(lake, "bronze/crm", "lastmodifieddate")
    crm.upsert_contact({"email": "late@example.com"}, id=before["id"][0])
    again = rows(reader(preset(crm.url, options=", overlap_seconds: 86400")), since=watermark)
    assert again.height > 1  # the day-long overlap re-read rows bronze already holds
    lake.merge("bronze/crm", again, keys=["id"])
    after = lake.read("bronze/crm")
    assert after.height == before.height == len(crm.contacts())
    changed = after.filter(pl.col("id") == before["id"][0])
    assert changed["email"][0] == "late@example.com"


def test_more_than_ten_thousand_results_are_read_without_paging_offsets() -> None:
    records, _people, _dups = build_crm(random.Random(5), 10_450)
    with CrmStandIn(records, client_id="cid", client_secret="secret") as crm:
        offsets: list[str] = []
        crm.on_search_page = lambda _n, body: offsets.append(str(body.get("after")))
        r = reader(preset(crm.url, options=", page_size: 200"))
        df = rows(r)
        # The stand-in answers 400 to any search past 10,000 results; the keyset never asks
        # for a page other than a query's first, so the window never applies.
        assert df["id"].n_unique() == len(records)
        assert set(offsets) == {"0"}
        assert r.stats.pages >= len(records) // 200


def _contacts(stamps: list[datetime]) -> list[dict[str, Any]]:
    return [
        {
            "id": str(1000 + n),
            "properties": {
                "email": f"person{n}@example.com",
                "firstname": f"P{n}",
                "lastmodifieddate": iso_millis(stamp),
            },
        }
        for n, stamp in enumerate(stamps, start=1)
    ]


def _land(config: RestSource, lake: Lake) -> None:
    """One ingest run as the ingest task does it: from bronze's watermark, batch by batch."""
    since = committed_watermark(lake, "bronze/crm", "lastmodifieddate")
    for batch in reader(config).batches(since=since, is_committed=lambda _b: False):
        lake.merge("bronze/crm", batch.frame, keys=["id"])


def _as_held(crm: CrmStandIn) -> dict[str, tuple[str | None, ...]]:
    return {c["id"]: tuple(c["properties"].get(p) for p in PROPS) for c in crm.contacts()}


def test_contacts_modified_between_pages_are_never_lost(tmp_path: Path) -> None:
    """Contacts read early are modified mid-run, which moves them to the end of the
    lastmodifieddate order. With offset paging (``after``) every later offset shifts and an
    unread contact slips behind the reader, below the next watermark, for good."""
    base = datetime(2026, 11, 1, tzinfo=UTC)
    with CrmStandIn(
        _contacts([base + timedelta(seconds=n) for n in range(60)]),
        client_id="cid",
        client_secret="secret",
    ) as crm:

        def modify_between_pages(number: int, _body: dict[str, Any]) -> None:
            if number in (1, 3):  # contacts the reader has already read move to the end
                for n in range(3):
                    crm.upsert_contact({"firstname": f"moved{number}.{n}"}, id=str(1001 + n))
            if number == 2:
                crm.upsert_contact({"email": "brand.new@example.com"})

        crm.on_search_page = modify_between_pages
        lake = Lake(str(tmp_path / "lake"))
        config = preset(crm.url, extra="    rows_per_batch: 10", options=", page_size: 10")
        _land(config, lake)
        crm.on_search_page = None
        _land(config, lake)  # the next incremental run, from the committed watermark

        bronze = lake.read("bronze/crm")
        landed = {row[0]: tuple(row[1:]) for row in bronze.select("id", *PROPS).iter_rows()}
        missing = sorted(set(_as_held(crm)) - set(landed))
        assert missing == []
        assert landed == _as_held(crm)


def test_more_contacts_on_one_timestamp_than_a_page_holds(tmp_path: Path) -> None:
    """35 contacts share one lastmodifieddate (a bulk import), pages hold 10: the reader
    drains that value by id and moves on; changes made while it drains are read too."""
    base = datetime(2026, 11, 1, tzinfo=UTC)
    stamps = [base + timedelta(seconds=n) for n in range(8)]
    stamps += [base + timedelta(seconds=30)] * 35
    stamps += [base + timedelta(seconds=60 + n) for n in range(12)]
    with CrmStandIn(_contacts(stamps), client_id="cid", client_secret="secret") as crm:
        bodies: list[dict[str, Any]] = []

        def modify_tied(number: int, body: dict[str, Any]) -> None:
            bodies.append(body)
            if number == 3:  # mid-drain: one read and one unread tied contact change
                crm.upsert_contact({"firstname": "changed-read"}, id="1009")
                crm.upsert_contact({"firstname": "changed-unread"}, id="1040")

        crm.on_search_page = modify_tied
        lake = Lake(str(tmp_path / "lake"))
        config = preset(crm.url, extra="    rows_per_batch: 10", options=", page_size: 10")
        _land(config, lake)
        crm.on_search_page = None

        bronze = lake.read("bronze/crm")
        landed = {row[0]: tuple(row[1:]) for row in bronze.select("id", *PROPS).iter_rows()}
        assert landed == _as_held(crm)
        assert len(bodies) < 20  # it moved on: no query repeated itself
        tie_sorted = [b for b in bodies if b["sorts"][0]["propertyName"] == "hs_object_id"]
        assert tie_sorted  # the tied value was drained by id


def test_access_token_expiry_mid_run_refreshes_once(crm: ObservedCrm) -> None:
    r = reader(preset(crm.url, extra="    rows_per_batch: 100"))
    batches = r.batches(since=None, is_committed=lambda _b: False)
    first = next(batches)
    crm.expire_tokens()
    rest = list(batches)
    r.close()
    ids = set(first.frame["id"]).union(*(set(b.frame["id"]) for b in rest))
    assert len(ids) == len(crm.contacts())  # rows at a batch boundary may be read twice
    assert crm.token_requests == 2
    assert sum(1 for _t, status in crm.observed if status == 401) == 1


@pytest.mark.parametrize(
    ("retry_after", "least_wait"),
    [
        (None, 0.0),
        ("1", 1.0),
        ("1.5", 1.5),  # float seconds, as Shopify sends them
        ("date", 1.0),  # an HTTP date two seconds ahead
    ],
)
def test_429_is_retried_honouring_retry_after(
    crm: ObservedCrm, retry_after: str | None, least_wait: float
) -> None:
    header = retry_after
    if retry_after == "date":
        header = email.utils.formatdate(time.time() + 2, usegmt=True)
    crm.fail_next(2, status=429, retry_after=header)
    sleeps = Sleeps()
    df = rows(reader(preset(crm.url), policy=RetryPolicy(sleep=sleeps, rng=random.Random(1))))
    assert df.height == len(crm.contacts())
    assert len(sleeps.waits) == 2
    assert min(sleeps.waits) >= least_wait
    if retry_after is None:
        assert max(sleeps.waits) <= 1.0  # full jitter: uniform(0, base * 2**attempt)


def test_5xx_storm_is_bounded_in_attempts_and_time(crm: ObservedCrm) -> None:
    crm.fail_next(1, status=502)
    crm.fail_next(1, status=504)
    assert rows(reader(preset(crm.url))).height == len(crm.contacts())

    crm.fail_next(4, status=503)
    before = api_requests(crm)
    policy = RetryPolicy(max_attempts=4, sleep=Sleeps(), rng=random.Random(2))
    with pytest.raises(SourceError, match=r"source 'crm'.*answered 503"):
        rows(reader(preset(crm.url), policy=policy))
    assert api_requests(crm) - before == 4

    # A wait longer than the total deadline is not slept: the run fails at once.
    crm.fail_next(1, status=503, retry_after="30")
    before = api_requests(crm)
    sleeps = Sleeps()
    policy = RetryPolicy(deadline=5, sleep=sleeps, rng=random.Random(2))
    with pytest.raises(SourceError, match="answered 503"):
        rows(reader(preset(crm.url), policy=policy))
    assert api_requests(crm) - before == 1 and sleeps.waits == []


def test_garbage_fails_naming_the_source(crm: ObservedCrm) -> None:
    crm.fail_next(1, status=200, body=b"<html>maintenance</html>")
    with pytest.raises(SourceError, match=r"source 'crm'.*non-JSON"):
        rows(reader(preset(crm.url)))
    crm.fail_next(1, status=200, body=b'{"rows": []}')
    with pytest.raises(SourceError, match=r"source 'crm'.*list of records at 'results'"):
        rows(reader(preset(crm.url)))
    crm.fail_next(1, status=200, body=b'{"results": [{"properties": {}}]}')
    with pytest.raises(SourceError, match=r"record without primary key 'id'"):
        rows(reader(preset(crm.url)))


def test_bad_client_secret_fails_clearly(crm: ObservedCrm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_CRM_SECRET", "wrong")
    with pytest.raises(SourceError, match=r"source 'crm'.*token endpoint .* answered 401"):
        rows(reader(preset(crm.url)))


def test_budget_keeps_the_observed_rate_under_the_limit() -> None:
    # 150 people, 12 a page: about 14 pages at 8/s, so the run spans two rolling seconds and
    # has to wait in the second (300 took twice as long and proved nothing more).
    records, _people, _dups = build_crm(random.Random(3), 150)
    limit = 10
    with ObservedCrm(
        records, client_id="cid", client_secret="secret", requests_per_second=limit
    ) as crm:
        # Budgeted a little under the documented limit, as one would configure it: the
        # margin absorbs network and scheduling jitter between our clock and the server's.
        r = reader(preset(crm.url, options=", page_size: 12", rps=str(limit - 2)))
        df = rows(r)
        assert df.height == len(records)
        pages = -(-len(records) // 12)
        assert [s for _t, s in crm.observed].count(429) == 0
        # Each keyset query re-reads the rows on its lower bound: a few more pages than rows/12.
        assert len(crm.observed) == r.stats.pages and pages <= r.stats.pages <= pages * 1.3
        assert crm.max_in_any_second() <= limit
        assert r.budget.waited_seconds > 0.5  # it paced itself instead of hitting 429s

        # Without the budget the same run hits the stand-in's limit at once.
        crm.observed.clear()
        policy = RetryPolicy(max_attempts=2, sleep=Sleeps(), rng=random.Random(0))
        with pytest.raises(SourceError, match="answered 429"):
            rows(reader(preset(crm.url, options=", page_size: 12"), policy=policy))
        assert [s for _t, s in crm.observed].count(429) >= 1


def test_a_non_idempotent_post_is_not_resent_blindly(crm: ObservedCrm) -> None:
    unsafe = preset(crm.url, extra="    idempotent: false")
    crm.fail_next(1, status=503)  # 503: the server did not act, safe to resend
    assert rows(reader(unsafe)).height == len(crm.contacts())
    crm.fail_next(1, status=500)  # 500: it may have acted; only an idempotent call is resent
    before = api_requests(crm)
    with pytest.raises(SourceError, match="answered 500"):
        rows(reader(unsafe))
    assert api_requests(crm) - before == 1
    crm.fail_next(1, status=500)
    keyed = unsafe.model_copy(update={"headers": {"Idempotency-Key": "run-1"}})
    assert rows(reader(keyed)).height == len(crm.contacts())
