"""Consent evidence in real runs: a contacts source that maps the optional evidence fields
(lawful basis, form id, double opt-in time, wording version, IP) puts them on its ledger rows,
the IP only as a keyed hash: the address itself stays in bronze and the staging log, nowhere else.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from flows.cli_consent import show_consent
from flows.ingest import ingest
from flows.transform import transform
from tasks.core.normalise import contact_key
from tasks.core.tables import CONSENT_EVENTS, STAGED, TABLES, is_bronze
from tasks.resources import pepper
from tests.flows.conftest import CONFIG, Sandbox

pytestmark = pytest.mark.flow

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
IP = "198.51.100.201"
EMAIL = "evidence.person@evidence-lake.example"
EVIDENCE_PROPERTIES = {
    "legal_basis": "Legitimate_Interests",
    "signup_form": "newsletter-footer",
    "doi_confirmed_at": "2026-09-02T10:15:00.000Z",
    "consent_text_version": "2026-03",
    "signup_ip": IP,
}
MAPPING = {
    "lawful_basis": "legal_basis",
    "consent_form_id": "signup_form",
    "double_opt_in_at": "doi_confirmed_at",
    "consent_wording_version": "consent_text_version",
    "consent_ip": "signup_ip",
}


def evidence_config(tmp_path: Path) -> str:
    """The demo pipeline with its CRM source asking for and mapping the evidence properties."""
    text = Path(CONFIG).read_text()
    asked = "marketing_opt_in, marketing_opt_in_at, lastmodifieddate]"
    mapped = "      opted_out: hs_email_optout\n"
    assert asked in text and mapped in text  # the demo source this test extends
    text = text.replace(asked, f"marketing_opt_in, marketing_opt_in_at, lastmodifieddate, "
                        f"{', '.join(EVIDENCE_PROPERTIES)}]")  # fmt: skip
    text = text.replace(mapped, mapped + "".join(f"      {f}: {c}\n" for f, c in MAPPING.items()))
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return str(path)


def test_mapped_evidence_reaches_the_ledger_and_the_ip_only_as_a_keyed_hash(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    config = evidence_config(tmp_path)
    sandbox.crm.upsert_contact(
        {"email": EMAIL, "marketing_opt_in": "true", "hs_email_optout": "false",
         "marketing_opt_in_at": "2026-09-02T10:00:00.000Z", **EVIDENCE_PROPERTIES}
    )  # fmt: skip
    ingest(config_path=config)
    transform(config_path=config, as_of=AS_OF)
    lake = sandbox.lake
    secret, version = pepper()
    key = pl.select(contact_key(pl.lit(EMAIL), pepper=secret, version=version)).item()

    ledger = lake.read(CONSENT_EVENTS)
    (row,) = ledger.filter(pl.col("contact_key") == key).iter_rows(named=True)
    assert (row["status"], row["lawful_basis"]) == ("opt-in", "legitimate_interests")  # label
    evidence = json.loads(row["evidence"])
    assert evidence["consent_form_id"] == "newsletter-footer"
    assert evidence["double_opt_in_at"] == "2026-09-02T10:15:00.000000Z"
    assert evidence["consent_wording_version"] == "2026-03"
    ip_hash = pl.select(contact_key(pl.lit(IP), pepper=secret, version=version)).item()
    assert evidence["ip_hash"] == ip_hash and IP not in row["evidence"]
    # Records of the demo data map none of it: their evidence has no more keys than before.
    others = ledger.filter(pl.col("contact_key") != key)["evidence"].map_elements(
        lambda e: tuple(json.loads(e)), return_dtype=pl.Object
    )
    assert set(others) == {("opted_in", "opted_in_at", "opted_out", "record_updated_at")}

    # The raw IP: in the staging log (allowed identifiers), in no table past it.
    assert IP in lake.read(STAGED["contacts"])["consent_ip"].to_list()
    holding = []
    for name in TABLES:
        if is_bronze(name) or name in STAGED.values() or not lake.exists(name):
            continue
        if any(IP in str(r) for r in lake.read(name).iter_rows()):
            holding.append(name)
    assert holding == []

    shown = "\n".join(show_consent(lake, EMAIL, pepper=secret, version=version))
    assert "newsletter-footer" in shown and ip_hash in shown and IP not in shown
