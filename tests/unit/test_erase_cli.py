"""``audience-lake erase``: erases from a real local lake, prints receipts without emails."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from flows.cli import main
from tasks.connectors.lake import CHANGE_FEED, Lake
from tasks.core.tables import ERASURE_LOG, ERASURE_REQUESTS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Lake, str]:
    """A lake whose CRM bronze holds two people, and a config without destinations."""
    text = (ROOT / "pipeline.yaml").read_text()
    head, tail = text.split("destinations:\n", 1)[0], text.split("\ntransform:\n", 1)[1]
    config = tmp_path / "pipeline.yaml"
    config.write_text(head + "destinations: {}\n\ntransform:\n" + tail)
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", str(tmp_path / "lake"))
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_CRM_CLIENT_SECRET", "cli-secret")
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_WEB_EVENTS_HMAC", "cli-hmac")
    lake = Lake(str(tmp_path / "lake"))
    lake.merge(
        "bronze/crm_contacts",
        pl.DataFrame(
            {"id": ["1", "2"], "email": [" Gone@Example.org", "kept@example.org"]},
        ),
        keys=["id"],
        table_properties=CHANGE_FEED,
    )
    return lake, str(config)


def test_erase_from_the_command_line(
    setup: tuple[Lake, str], capsys: pytest.CaptureFixture[str]
) -> None:
    lake, config = setup
    assert main(["erase", "--config", config, "--email", "GONE@example.org"]) == 0
    out = capsys.readouterr().out
    assert "erased" in out and "gone@example.org" not in out.lower()
    assert Lake(lake.root).read("bronze/crm_contacts")["id"].to_list() == ["2"]
    assert Lake(lake.root).read(ERASURE_REQUESTS).height == 1

    # Again: a no-op with a receipt.
    assert main(["erase", "--config", config, "--email", "gone@example.org"]) == 0
    assert "already-erased" in capsys.readouterr().out
    assert Lake(lake.root).read(ERASURE_LOG)["status"].to_list().count("already-erased") == 1


def test_erase_refuses_what_is_not_an_email(
    setup: tuple[Lake, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, config = setup
    request = tmp_path / "request.txt"
    request.write_text("# two people\nkept@example.org\nnot-an-address\n")
    assert main(["erase", "--config", config, "--file", str(request)]) == 2
    assert "entry 2" in capsys.readouterr().err
    assert main(["erase", "--config", config]) == 2
