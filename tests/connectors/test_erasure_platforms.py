"""Erasure at the platforms: every configured destination is asked to delete the person, and
the stand-ins (which follow the vendors' documented deletion endpoints) no longer hold them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from infra.sandbox.hubspot_marketing import HubSpotMarketingStandIn
from infra.sandbox.klaviyo import KlaviyoStandIn
from infra.sandbox.mailchimp import MailchimpStandIn
from tasks.connectors.destinations import PLATFORMS
from tasks.connectors.destinations.protocol import Member
from tasks.connectors.lake import CHANGE_FEED, Lake
from tasks.core.config import PipelineConfig, load_pipeline
from tasks.core.tables import ERASURE_LOG
from tasks.erasure import Person, erase_on_platforms, erase_people

ROOT = Path(__file__).resolve().parents[2]
GONE = Member("key-gone", "gone.person@example.com")
KEPT = Member("key-kept", "kept.person@example.com")
NOW = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def platforms() -> Iterator[tuple[MailchimpStandIn, KlaviyoStandIn, HubSpotMarketingStandIn]]:
    with (
        MailchimpStandIn(api_key="erase-key-us1", lists=["list-a", "list-b"]) as mailchimp,
        KlaviyoStandIn(api_key="pk_erase", lists=["KlList1"]) as klaviyo,
        HubSpotMarketingStandIn(token="erase-token", lists=["41"], subscription_ids=[1001]) as hs,
    ):
        yield mailchimp, klaviyo, hs


def config_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mailchimp: str, klaviyo: str, hubspot: str
) -> PipelineConfig:
    text = (ROOT / "pipeline.yaml").read_text()
    head = text.split("destinations:\n", 1)[0]
    tail = text.split("\ntransform:\n", 1)[1]
    block = (
        "destinations:\n"
        "  mailchimp:\n    kind: mailchimp\n"
        f"    base_url: {mailchimp}\n    allow_insecure_http: true\n"
        "    api_key: {secret: erase_mc}\n"
        "    audiences: {champions: list-a, at_risk: list-b}\n"
        "  klaviyo:\n    kind: klaviyo\n"
        f"    base_url: {klaviyo}\n    allow_insecure_http: true\n"
        "    api_key: {secret: erase_kl}\n"
        "    audiences: {champions: KlList1}\n"
        "  hubspot:\n    kind: hubspot\n"
        f"    base_url: {hubspot}\n    allow_insecure_http: true\n"
        "    token: {secret: erase_hs}\n    subscription_type_id: 1001\n"
        "    audiences: {champions: '41'}\n"
    )
    path = tmp_path / "pipeline.yaml"
    path.write_text(head + block + "\ntransform:\n" + tail)
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_ERASE_MC", "erase-key-us1")
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_ERASE_KL", "pk_erase")
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_ERASE_HS", "erase-token")
    return load_pipeline(str(path))


def test_every_platform_erases_the_person_and_keeps_the_others(
    platforms: tuple[MailchimpStandIn, KlaviyoStandIn, HubSpotMarketingStandIn],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mailchimp, klaviyo, hubspot = platforms
    config = config_for(tmp_path, monkeypatch, mailchimp.url, klaviyo.url, hubspot.url)
    audiences = {"mailchimp": ["list-a", "list-b"], "klaviyo": ["KlList1"], "hubspot": ["41"]}
    for name, destination in config.destinations.items():
        adapter = PLATFORMS[destination.kind](destination)
        try:
            for audience in audiences[name]:
                assert all(r.ok for r in adapter.upsert(audience, [GONE, KEPT])), name
        finally:
            adapter.close()
    assert klaviyo.profile(GONE.email) is not None and hubspot.contact(GONE.email) is not None

    answers = erase_on_platforms(config, [Person(GONE.email, GONE.contact_key)])

    assert set(answers[GONE.email]) == {"mailchimp", "klaviyo", "hubspot"}
    assert all(a.startswith("ok") for a in answers[GONE.email].values()), answers
    for list_id in ("list-a", "list-b"):
        emails = {m["email_address"] for m in mailchimp.members(list_id).values()}
        assert emails == {KEPT.email}
    assert klaviyo.profile(GONE.email) is None and klaviyo.profile(KEPT.email) is not None
    assert hubspot.contact(GONE.email) is None and hubspot.contact(KEPT.email) is not None


def test_a_platform_that_refuses_is_reported_not_hidden(
    platforms: tuple[MailchimpStandIn, KlaviyoStandIn, HubSpotMarketingStandIn],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mailchimp, klaviyo, hubspot = platforms
    config = config_for(tmp_path, monkeypatch, mailchimp.url, klaviyo.url, hubspot.url)
    hubspot.token = "rotated"  # every HubSpot call is now refused (401)
    answers = erase_on_platforms(config, [Person(GONE.email, GONE.contact_key)])
    assert answers[GONE.email]["hubspot"].startswith("failed"), answers
    assert answers[GONE.email]["klaviyo"].startswith("ok")


def test_a_rerun_completes_an_erasure_a_platform_refused(
    platforms: tuple[MailchimpStandIn, KlaviyoStandIn, HubSpotMarketingStandIn],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mailchimp, klaviyo, hubspot = platforms
    config = config_for(tmp_path, monkeypatch, mailchimp.url, klaviyo.url, hubspot.url)
    lake = Lake(str(tmp_path / "lake"))
    lake.merge(
        "bronze/crm_contacts",
        pl.DataFrame({"id": ["1", "2"], "email": [GONE.email.upper(), KEPT.email]}),
        keys=["id"],
        table_properties=CHANGE_FEED,
    )

    def erase(run_id: str) -> list[str]:
        receipts = erase_people(
            lake, config, [GONE.email], pepper=b"p", version=1, run_id=run_id, now=NOW
        )
        return [r.status for r in receipts]

    hubspot.token = "rotated"
    assert erase("first") == ["platforms-pending"]
    assert lake.read("bronze/crm_contacts")["id"].to_list() == ["2"]  # the lake is clean
    hubspot.token = "erase-token"
    assert erase("rerun") == ["erased"]
    assert hubspot.contact(GONE.email) is None
    assert erase("again") == ["already-erased"]
    log = lake.read(ERASURE_LOG)
    assert dict(log.select("run_id", "status").iter_rows()) == {
        "first": "platforms-pending",
        "rerun": "erased",
        "again": "already-erased",
    }
    assert log["request_id"].n_unique() == 1  # one request, three receipts
