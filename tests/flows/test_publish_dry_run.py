"""The dry run a marketer reads and the send-budget planner, in real publish flow runs.

Per platform stand-in (Mailchimp, Klaviyo, HubSpot), after a first publish the gold tables
change in a crafted way: 3 people join (creates), 4 change (the amount for 3 of them, the
first name for 1: updates, the amount changing most), 2 leave the segment (removals, mirror
mode) and 1 opts out (an unsubscribe). A dry run through the CLI sends nothing to the
platform, and its summary and run-page artifacts show exactly those counts, with every email
masked. The real publish that follows makes exactly the API calls the planner priced, counted
at the stand-in. A send budget below the estimate holds the audience; its unsubscribe still
goes out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.client.schemas.sorting import ArtifactSort

import flows.publish
from flows.cli import main
from flows.publish import publish
from infra.sandbox._http import StandInServer
from tasks.connectors.lake import Lake
from tasks.core.config import load_pipeline
from tasks.core.tables import SYNC_LEDGER
from tasks.errors import ConfigError
from tasks.publish_report import PLAN_MARKDOWN_KEY, PLAN_TABLE_KEY, budget_holds, preview_audience
from tasks.reports import PublishReport
from tests.flows.buyers_stand_ins import (
    NAME_FIELD,
    destination_yaml,
    hubspot_with_buyers,
    klaviyo_with_buyers,
    mailchimp_with_buyers,
    on_buyers_list,
    unsubscribed_at,
)

pytestmark = pytest.mark.flow

SEGMENT = "buyers"
SECRET = "dry-run-test-key"
PEOPLE = 12
FIRST = set(range(8))  # on the list after the first publish
JOINERS = {8, 9, 10}  # creates
AMOUNT_CHANGED = {1, 2, 3}  # updates: lifetime value
NAME_CHANGED = {4}  # update: first name
LEAVERS = {5, 6}  # removals (mirror mode)
OPTS_OUT = {7}  # unsubscribe


@dataclass
class Platform:
    kind: str
    server: StandInServer
    yaml: str  # the destination block; {url} and {audience} filled in
    amount_field: str
    on_list: Callable[[str], bool]
    unsubscribed: Callable[[str], bool]


def _mailchimp() -> Iterator[Platform]:
    with mailchimp_with_buyers(SECRET) as mc:
        yield Platform(
            "mailchimp", mc, destination_yaml("mailchimp", "dry_run"), "LTV",
            on_list=on_buyers_list(mc), unsubscribed=unsubscribed_at(mc),
        )  # fmt: skip


def _klaviyo() -> Iterator[Platform]:
    with klaviyo_with_buyers(SECRET, polls_to_finish=1) as kl:
        yield Platform(
            "klaviyo", kl, destination_yaml("klaviyo", "dry_run"), "ltv",
            on_list=on_buyers_list(kl), unsubscribed=unsubscribed_at(kl),
        )  # fmt: skip


def _hubspot() -> Iterator[Platform]:
    with hubspot_with_buyers(SECRET) as hs:
        yield Platform(
            "hubspot", hs, destination_yaml("hubspot", "dry_run"), "ltv",
            on_list=on_buyers_list(hs), unsubscribed=unsubscribed_at(hs),
        )  # fmt: skip


PLATFORMS = {"mailchimp": _mailchimp, "klaviyo": _klaviyo, "hubspot": _hubspot}


@pytest.fixture(params=sorted(PLATFORMS))
def platform(request: pytest.FixtureRequest) -> Iterator[Platform]:
    yield from PLATFORMS[request.param]()


def email(n: int) -> str:
    return f"shopper{n}@example.com"


def key(n: int) -> str:
    return f"v1:{n:064x}"


def write_gold(lake: Lake, *, members: set[int], opted_out: set[int], changed: bool) -> None:
    """``silver/contacts``, ``gold/audience_members`` and ``gold/customer_features``; with
    ``changed`` the amounts of :data:`AMOUNT_CHANGED` and names of :data:`NAME_CHANGED` move."""
    people = range(PEOPLE)
    lake.overwrite("silver/contacts", pl.DataFrame(
        {"contact_key": [key(n) for n in people], "email": [email(n) for n in people],
         "consent_status": ["unsubscribed" if n in opted_out else "subscribed" for n in people]},
    ))  # fmt: skip
    inside = sorted(members - opted_out)
    names = [f"Zed{n}" if changed and n in NAME_CHANGED else f"Ann{n}" for n in inside]
    lake.overwrite("gold/audience_members", pl.DataFrame(
        {"segment": [SEGMENT] * len(inside), "contact_key": [key(n) for n in inside],
         "email": [email(n) for n in inside], "first_name": names,
         "last_name": ["Lake"] * len(inside)},
        schema={c: pl.String() for c in ("segment", "contact_key", "email", "first_name",
                                         "last_name")},
    ))  # fmt: skip
    ltv = [10.0 * n + (500.0 if changed and n in AMOUNT_CHANGED else 0.0) for n in people]
    lake.overwrite("gold/customer_features", pl.DataFrame(
        {"contact_key": [key(n) for n in people], "lifetime_value": ltv},
    ))  # fmt: skip


def crafted_change(lake: Lake) -> None:
    members = (FIRST | JOINERS) - LEAVERS
    write_gold(lake, members=members, opted_out=OPTS_OUT, changed=True)


@dataclass
class World:
    platform: Platform
    lake: Lake
    config: str


def make_world(
    platform: Platform, root: Path, monkeypatch: pytest.MonkeyPatch, *, budget: str = ""
) -> World:
    audience = (
        "        mode: mirror\n        create_fields: true\n        fields:\n"
        f"          {NAME_FIELD[platform.kind]}: {{column: first_name}}\n"
        f"          {platform.amount_field}: "
        "{column: lifetime_value, type: number, format: '0.00'}\n" + budget
    )
    destination = platform.yaml.format(url=platform.server.url, audience=audience)
    text = (
        "version: 1\nsources:\n  people: {kind: files, role: contacts, path: ./x, "
        f"format: csv}}\nsegments:\n  - name: {SEGMENT}\n    where: order_count >= 1\n"
        f"destinations:\n  {platform.kind}:\n    {destination}"
    )
    config = root / "pipeline.yaml"
    config.write_text(text)
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_DRY_RUN", SECRET)
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", str(root / "lake"))
    lake = Lake(str(root / "lake"))
    write_gold(lake, members=FIRST, opted_out=set(), changed=False)
    return World(platform, lake, str(config))


def run_publish(world: World, **kwargs: Any) -> tuple[PublishReport, str]:
    """One real ``publish`` flow run: its report for the audience and its flow run id."""
    state = publish(config_path=world.config, return_state=True, **kwargs)
    reports: list[PublishReport] = state.result()
    assert len(reports) == 1
    return reports[0], str(state.state_details.flow_run_id)


def artifacts(key_: str, flow_run_id: str | None = None) -> list[Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key_]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]) if flow_run_id else None,
            ),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert found, f"no {key_} artifact"
    return found


def test_dry_run_shows_the_change_sends_nothing_and_the_planner_counts_every_call(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    world = make_world(platform, tmp_path, monkeypatch)
    first, _ = run_publish(world)
    assert first.sent == len(FIRST) and first.failed == 0, first.errors
    crafted_change(world.lake)

    # The dry run, as a marketer starts it: nothing at all reaches the platform.
    before = len(platform.server.requests)
    capsys.readouterr()
    assert main(["publish", "--dry-run", "--config", world.config]) == 0
    out = capsys.readouterr().out
    assert len(platform.server.requests) == before, platform.server.requests[before:]
    assert "publish plan (dry run: nothing sent):" in out
    amount = platform.amount_field
    assert f"3 creates, 4 updates ({amount} 3, {NAME_FIELD[platform.kind]} 1)" in out
    assert "2 removals, 1 unsubscribes, 0 holdouts" in out
    assert "@example.com" not in out and "s***@e***.com" in out
    assert "Ann8" not in out and f"{NAME_FIELD[platform.kind]}=A***" in out  # names masked

    # The run page: a table row per audience and the detail with a masked sample.
    row = json.loads(str(artifacts(PLAN_TABLE_KEY)[0].data))[0]
    assert (row["creates"], row["updates"], row["removals"], row["unsubscribes"]) == (3, 4, 2, 1)
    assert row["fields changing most"].startswith(f"{amount} 3")
    detail = str(artifacts(PLAN_MARKDOWN_KEY)[0].data)
    assert "dry run: nothing is sent" in detail and "| 3 | 4 | 2 | 1 | 0 |" in detail
    assert "@example.com" not in detail and "| s***@e***.com | update |" in detail
    assert f"{amount}=520.0" in detail  # person 2's new amount (not an identifier)
    assert "Zed4" not in detail and f"{NAME_FIELD[platform.kind]}=Z***" in detail

    # The real publish: the planner priced exactly the calls the stand-in then received once
    # the platform's opt-outs were read back (a read whose page count the plan cannot know,
    # made before the push: its requests are only reads).
    read_done: list[int] = []
    read_before_push = flows.publish.read_before_push

    def read_then_mark(*args: Any, **kwargs: Any) -> Any:
        result = read_before_push(*args, **kwargs)
        read_done.append(len(platform.server.requests))
        return result

    monkeypatch.setattr(flows.publish, "read_before_push", read_then_mark)
    before = len(platform.server.requests)
    report, _ = run_publish(world)
    assert len(read_done) == 1
    reads = platform.server.requests[before : read_done[0]]
    assert reads and all(m == "GET" or path.endswith("/read") for m, path in reads), reads
    made = platform.server.requests[read_done[0] :]
    assert report.preview is not None
    planned = report.preview.estimate
    assert planned.calls == len(made), (planned, made)
    assert report.sent == 3 + 4 + 2 + 1 and report.failed == 0, report.errors
    assert report.removed == 2 and report.unsubscribed == 1
    # Nothing left: the next plan is empty and costs nothing.
    again, _ = run_publish(world, dry_run=True)
    assert again.preview is not None and again.preview.estimate.calls == 0
    assert again.preview.changes.planned == 0


def test_a_send_budget_below_the_estimate_holds_the_audience_but_not_its_unsubscribes(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = "        send_budget: {max_calls: 2}\n"
    world = make_world(platform, tmp_path, monkeypatch, budget=budget)
    # The first publish is over the budget too: an operator sends it with override_hold.
    first, _ = run_publish(world, override_hold=True)
    assert first.sent == len(FIRST), first.errors
    crafted_change(world.lake)
    before = len(platform.server.requests)
    report, run_id = run_publish(world)
    assert report.outcome == "held"
    assert report.held is not None and "send budget" in report.held
    assert "send_budget.max_calls 2" in report.held and "calls (" in report.held
    assert report.unsubscribed == 1 and platform.unsubscribed(email(7))
    assert not platform.on_list(email(8))  # creates wait
    assert platform.on_list(email(5))  # removals wait
    assert report.held_back == 3 + 4 + 2
    sent = platform.server.requests[before:]
    assert sent, "the unsubscribe did not go out"
    detail = str(artifacts(PLAN_MARKDOWN_KEY, run_id)[0].data)
    assert "**Held**: send budget" in detail


def test_ledger_rows_from_before_field_hashes_count_as_updates_with_unknown_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgraded lake: the ledger was written without ``field_hashes``."""
    with contextmanager(_mailchimp)() as platform:
        world = make_world(platform, tmp_path, monkeypatch)
        run_publish(world)
        old = world.lake.read(SYNC_LEDGER).drop("field_hashes")
        # The same state in a lake whose ledger has the old schema (a new path: the process
        # keeps the open tables of the first one).
        upgraded = tmp_path / "upgraded"
        monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", str(upgraded))
        world.lake = Lake(str(upgraded))
        old.write_delta(str(upgraded / SYNC_LEDGER))
        crafted_change(world.lake)
        dry, _ = run_publish(world, dry_run=True)
        assert dry.preview is not None
        changes = dry.preview.changes
        assert (changes.creates, changes.updates, changes.updates_fields_unknown) == (3, 4, 4)
        assert changes.top_fields == ()
        report, _ = run_publish(world)  # the ledger gains the column on its next merge
        assert report.sent == 10 and report.failed == 0, report.errors
        assert "field_hashes" in world.lake.read(SYNC_LEDGER).columns


def test_a_destination_that_cannot_open_is_planned_but_not_priced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken destination (here: its adapter refuses to open) must not stop the plan of the
    others, nor their unsubscribes: its preview says why it has no price, and nothing holds."""
    with contextmanager(_hubspot)() as platform:
        world = make_world(
            platform, tmp_path, monkeypatch, budget="        send_budget: {max_calls: 1}\n"
        )
        crafted_change(world.lake)
        config = load_pipeline(world.config, env={"AUDIENCE_LAKE_SECRET_DRY_RUN": SECRET})

        def broken(_: object) -> Any:
            raise ConfigError("token for ops@example.com is not set")

        preview = preview_audience(
            world.lake, "hubspot", config.destinations["hubspot"], SEGMENT, open_sink=broken
        )
        assert preview.changes.creates == len((FIRST | JOINERS) - LEAVERS - OPTS_OUT)
        assert preview.unpriced == "token for o***@e***.com is not set"
        assert budget_holds(config, [preview]) == {}
        assert platform.server.requests == []
