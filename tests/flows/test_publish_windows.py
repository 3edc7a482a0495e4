"""The publish engine sends a window of batches at once and commits the ledger once per window.

Real Delta tables, the real Mailchimp adapter and its stand-in on loopback (holding every call
a little while, so concurrent calls overlap), ``publish_segment`` as the publish task runs it.
"""

from __future__ import annotations

from pathlib import Path

from prefect.logging import disable_run_logger

from infra.sandbox.mailchimp import MailchimpStandIn
from tasks.connectors.lake import Lake
from tasks.core.config import load_pipeline
from tasks.core.tables import SYNC_LEDGER
from tasks.publishing import publish_segment
from tests.faults.publish_world import API_KEY, LISTS, Person, pipeline_yaml, write_people
from tests.faults.world import environment

PEOPLE = 60
BATCH = 5  # publish_world's batch size: 12 batches
WINDOW = 6


def test_batches_of_a_window_are_in_flight_together_and_committed_together(
    tmp_path: Path,
) -> None:
    people = [Person(n, "subscribed", ("seg_a",), f"P{n}") for n in range(PEOPLE)]
    lake = Lake(str(tmp_path / "lake"))
    write_people(lake, people)
    with (
        MailchimpStandIn(api_key=API_KEY, lists=LISTS.values(), response_delay=0.2) as mailchimp,
        environment({"AUDIENCE_LAKE_SECRET_FAULT_MAILCHIMP": API_KEY}),
        disable_run_logger(),
    ):
        config_path = tmp_path / "pipeline.yaml"
        config_path.write_text(
            pipeline_yaml(mailchimp.url, lease_seconds=60, lease_wait_seconds=0).replace(
                "window_batches: 2", f"window_batches: {WINDOW}"
            )
        )
        config = load_pipeline(str(config_path))
        report = publish_segment(
            lake, "mailchimp", config.destinations["mailchimp"], "seg_a", run_id="windows",
            settings=config.publish,
        )  # fmt: skip
        sends = mailchimp.sends_per_member(LISTS["seg_a"])
        peak, refused = mailchimp.max_in_flight, mailchimp.rejected_over_ceiling
    assert report.sent == PEOPLE and report.failed == 0
    assert set(sends.values()) == {1} and len(sends) == PEOPLE
    # Several batches overlapped, never more than a window, and the ceiling never answered 429.
    assert 2 <= peak <= WINDOW and refused == 0
    # Two windows of six batches: the first intent, the first results with the second intent,
    # the last results - three ledger commits, where batch by batch took 24.
    assert lake.version(SYNC_LEDGER) == 2  # versions 0, 1, 2
    ledger = lake.read(SYNC_LEDGER)
    assert ledger.height == PEOPLE and set(ledger["status"]) == {"ok"}
