"""Pinned publishes, the sync history and gold holdouts, as real Prefect flow runs.

A publish reads gold at pinned Delta versions and records them per send in
``ops/sync_history``; ``as_of_run`` reruns it on the gold a past run read, while consent is
read at its latest version (an opt-out made since always wins); ``audience-lake sync history``
re-reads what each send carried by time travel. Holdouts come from ``gold/audience_holdouts``
and are never sent. Real Delta tables, the real Mailchimp adapter against its stand-in.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from flows.cli import main
from flows.publish import publish
from infra.sandbox.mailchimp import MailchimpStandIn
from tasks.connectors.lake import Lake
from tasks.core.config import load_pipeline
from tasks.core.tables import (
    AUDIENCE,
    CONSENT_EVENTS,
    CONSENT_EVENTS_SCHEMA,
    CONTACTS,
    HOLDOUTS,
    RUNS,
    SYNC_HISTORY,
)
from tasks.engine.holdouts import build_holdouts
from tasks.reports import PublishReport
from tests.flows.test_publish_platforms import PEOPLE, SECRET, email, key, write_gold

pytestmark = pytest.mark.flow

LIST = "list-buyers"


@dataclass
class Setup:
    mailchimp: MailchimpStandIn
    config: Path
    lake: Lake

    def publish(self, as_of_run: str | None = None) -> tuple[str, list[PublishReport]]:
        """One publish flow run; (its run id, its reports)."""
        before = self.run_ids()
        reports = publish(config_path=str(self.config), as_of_run=as_of_run)
        new = self.run_ids() - before
        assert len(new) == 1, new
        return new.pop(), reports

    def run_ids(self) -> set[str]:
        if not self.lake.exists(RUNS):
            return set()
        runs = self.lake.read(RUNS).filter(pl.col("flow") == "publish")
        return set(runs["root_run_id"])

    def ltv(self, n: int) -> float:
        member = next(m for m in self.mailchimp.members(LIST).values()
                      if m["email_address"] == email(n))  # fmt: skip
        return float(member["merge_fields"]["LTV"])

    def status(self, n: int) -> str | None:
        found = [m["status"] for m in self.mailchimp.members(LIST).values()
                 if m["email_address"] == email(n)]  # fmt: skip
        return found[0] if found else None


def configure(root: Path, *, mode: str = "upsert", holdout: float = 0.0) -> Path:
    path = root / "pipeline.yaml"
    path.write_text(
        "version: 1\nsources:\n  people: {kind: files, role: contacts, path: ./x, format: csv}\n"
        "segments:\n  - name: buyers\n    where: order_count >= 1\n"
        "destinations:\n  mailchimp:\n    kind: mailchimp\n    base_url: ${MC_URL}\n"
        "    api_key: {secret: platform_test}\n    audiences:\n      buyers:\n"
        f"        list: {LIST}\n        mode: {mode}\n        holdout: {holdout}\n"
        "        create_fields: true\n        fields:\n"
        "          FNAME: {column: first_name}\n"
        "          LTV: {column: lifetime_value, type: number, format: '0.00'}\n"
    )
    return path


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    with MailchimpStandIn(api_key=SECRET, lists=[LIST]) as mailchimp:
        monkeypatch.setenv("MC_URL", mailchimp.url)
        monkeypatch.setenv("AUDIENCE_LAKE_SECRET_PLATFORM_TEST", SECRET)
        monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", str(tmp_path / "lake"))
        yield Setup(mailchimp, configure(tmp_path), Lake(str(tmp_path / "lake")))


def opt_out_in_the_consent_ledger(lake: Lake, n: int) -> None:
    """An opt-out silver has not seen yet (no transform ran since)."""
    now = datetime.now(UTC)
    row = {"event_id": f"e{n}", "contact_key": key(n), "channel": "email", "status": "opt-out",
           "lawful_basis": None, "source": "platform:mailchimp", "source_record_id": None,
           "evidence": None, "occurred_at": now, "recorded_at": now, "run_id": "test"}  # fmt: skip
    lake.append_once(
        CONSENT_EVENTS, pl.DataFrame([row], schema=CONSENT_EVENTS_SCHEMA), batch_id=f"e{n}"
    )


def test_a_pinned_rerun_resends_a_past_run_but_never_over_a_newer_opt_out(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = setup.lake
    everyone = set(range(PEOPLE))
    write_gold(lake, ltv={}, members=everyone, opted_out=set())
    first, reports = setup.publish()
    assert reports[0].sent == PEOPLE
    pinned_version = lake.version(AUDIENCE)
    assert setup.ltv(2) == 20.12

    write_gold(lake, ltv={2: 999.999}, members=everyone, opted_out=set())
    setup.publish()
    assert setup.ltv(2) == 1000.0

    # After the pinned version: person 6 opts out in our sources, person 3 in the consent
    # ledger only (silver still says subscribed).
    write_gold(lake, ltv={2: 999.999}, members=everyone, opted_out={6})
    opt_out_in_the_consent_ledger(lake, 3)
    before = setup.run_ids()
    assert main(["publish", "--config", str(setup.config), "--as-of-run", first]) == 0
    (rerun,) = setup.run_ids() - before
    assert setup.ltv(2) == 20.12  # the value the pinned gold holds, sent again
    assert setup.status(6) == "unsubscribed" and setup.status(3) == "unsubscribed"
    assert setup.status(0) == "subscribed"
    history = lake.read(SYNC_HISTORY).filter(pl.col("run_id") == rerun)
    assert set(history["as_of_run"]) == {first}
    assert set(history["audience_version"]) == {pinned_version}
    assert dict(history.select("contact_key", "action").iter_rows()) == {
        key(2): "subscribe",
        key(3): "unsubscribe",
        key(6): "unsubscribe",
    }
    versions = json.loads(history["versions"][0])
    assert versions[CONTACTS] == lake.version(CONTACTS)  # consent: the latest, never pinned
    assert versions[CONSENT_EVENTS] == lake.version(CONSENT_EVENTS)
    runs = lake.read(RUNS).filter(pl.col("root_run_id") == rerun)
    assert json.loads(runs["reads"][0])[AUDIENCE] == [pinned_version]

    capsys.readouterr()
    assert main(["sync", "history", "--config", str(setup.config), "--contact-key", key(2)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"contact {key(2)}: 3 send(s)"
    values = [json.loads(line.split("values: ")[1].split("  [")[0])
              for line in lines if "values: " in line]  # fmt: skip
    assert [v["LTV"] for v in values] == [20.12, 1000.0, 20.12]
    assert {v["FNAME"] for v in values} == {"A***"}  # a first name is an identifier: masked
    assert out.count("[verified]") == 3 and out.count(f"as of run {first}") == 1
    assert email(2) not in out and "Ann2" not in out


def test_consent_and_unknown_tables_cannot_be_pinned(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    write_gold(setup.lake, ltv={}, members=set(range(PEOPLE)), opted_out=set())
    capsys.readouterr()
    code = main(["publish", "--config", str(setup.config), "--version", f"{CONTACTS}=0"])
    assert code == 2
    assert "consent is always read at its latest version" in capsys.readouterr().err
    code = main(["publish", "--config", str(setup.config), "--version", f"{AUDIENCE}=99"])
    assert code == 2 and f"{AUDIENCE} has no version 99" in capsys.readouterr().err
    code = main(["publish", "--config", str(setup.config), "--as-of-run", "no-such-run"])
    assert code == 2 and "'no-such-run' has no recorded publish" in capsys.readouterr().err
    assert setup.mailchimp.members(LIST) == {}  # nothing was sent by any of them

    history = ["sync", "history", "--config", str(setup.config), "--email"]
    assert main([*history, "nobody@example.com"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("contact v") and "0 send(s)" in out and "nobody@" not in out
    assert main([*history, "not an address@"]) == 2
    err = capsys.readouterr().err
    assert "--email is not a valid email address" in err and "not an address" not in err


def test_holdouts_come_from_gold_are_never_sent_and_survive_a_resize(
    setup: Setup, tmp_path: Path
) -> None:
    setup.config = configure(tmp_path, mode="mirror", holdout=0.5)
    config = load_pipeline(str(setup.config))
    lake, log = setup.lake, logging.getLogger("test")
    write_gold(lake, ltv={}, members=set(range(PEOPLE)), opted_out=set())
    build_holdouts(lake, config, logger=log)
    recorded = lake.read(HOLDOUTS)
    held = set(recorded.filter("held_out")["contact_key"])
    assert 0 < len(held) < PEOPLE and recorded.height == PEOPLE
    first, reports = setup.publish()
    assert reports[0].held_out == len(held) and reports[0].sent == PEOPLE - len(held)
    for n in range(PEOPLE):
        assert (setup.status(n) is None) == (key(n) in held), n  # never sent
    before = lake.version(HOLDOUTS)

    # The rest of the audience re-sizes: people leave; the others keep their assignment.
    write_gold(lake, ltv={}, members=set(range(PEOPLE)) - {0, 1, 2}, opted_out=set())
    build_holdouts(lake, config, logger=log)
    after = lake.read(HOLDOUTS)
    kept = recorded.filter(pl.col("contact_key").is_in(after["contact_key"].implode()))
    assert kept.sort("contact_key").equals(after.sort("contact_key"))
    assert build_holdouts(lake, config, logger=log) == 0  # an unchanged rebuild writes nothing

    # A pinned rerun sees the same holdout as the run it reuses: nothing to send.
    _, again = setup.publish(as_of_run=first)
    assert again[0].planned == 0
    assert json.loads(lake.read(RUNS).filter(pl.col("root_run_id") == _)["reads"][0])[HOLDOUTS] == [
        before
    ]
    assert all(setup.status(n) is None for n in range(PEOPLE) if key(n) in held)
