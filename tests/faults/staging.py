"""The transform's fault world: the sample data set ingested once, then a crash per lake copy.

:func:`build_staging_world` generates the seeded sample data (CRM contacts, an SQLite orders
table, NDJSON events, enrichment CSVs), optionally breaks a share of the CRM emails, starts the
CRM stand-in and ingests every source of the repository's ``pipeline.yaml`` into a *template*
lake. Each fault test copies a template, crashes or fails a transform on the copy, reruns it,
and compares the outcome (:class:`Outcome`) with that of an uninterrupted run on another copy.

:func:`run_transform` runs the transform flow's tasks (their plain functions, so no Prefect
server is involved) in the flow's order; the fault child (``python -m tests.faults.child``)
runs the same function. :func:`instrument_commits` reports every Delta commit a lake write
made, so a test can enumerate the run's commit boundaries and kill it right after each one.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from infra.sandbox.crm import CrmStandIn
from infra.sandbox.generate import generate
from tasks.connectors.lake import Lake
from tests.faults.world import ROOT, environment

CONFIG = ROOT / "pipeline.yaml"
AS_OF = datetime(2026, 11, 1, tzinfo=UTC)  # the sample data's "now"
CRM_SECRET = "staging-secret"
WRITE_METHODS = (
    "append_once",
    "merge",
    "insert_new",
    "overwrite",
    "overwrite_partitions",
    "delete",
    "upsert",
)
"""Every :class:`Lake` method that can commit."""


_LOG = logging.getLogger("tests.faults.staging")


def run_transform(*, run_id: str) -> None:
    """The transform flow's writes, in the flow's order (``flows/transform.py``), without Prefect.

    Stage, silver, gold, transform state, volume metrics: the flow's task functions with the
    flow's arguments. (The flow then only renders artifacts and checks volumes; publish holds
    are computed from ``ops/volume_metrics``, which this writes.)
    """
    from tasks.core.config import load_pipeline
    from tasks.engine.roles import stage_bronze
    from tasks.resources import open_lake
    from tasks.transform import build_gold, build_silver, commit_transform_state
    from tasks.volume import record_volumes

    config = load_pipeline(CONFIG)
    now = datetime.now(UTC)
    staging = stage_bronze(open_lake(), config, run_id=run_id, now=now, logger=_LOG)
    silver = build_silver(None, config, staging=staging, run_id=run_id, now=now, as_of=AS_OF)
    gold = build_gold(
        None, config, as_of=AS_OF, run_id=run_id, now=now, contact_keys=silver.contact_keys
    )
    if silver.state is not None:
        commit_transform_state.fn(silver.state, run_id=run_id)
    record_volumes.fn(
        [*staging.metrics, *silver.metrics, *gold.metrics],
        run_id=run_id,
        stage="transform",
        now=now,
    )


def instrument_commits(on_commit: Callable[[int, str, str], None]) -> Callable[[], None]:
    """Call ``on_commit(n, method, table)`` after each lake write that made a Delta commit.

    A write that committed nothing (an unchanged merge, a batch already recorded) does not
    count, so ``n`` numbers the run's commit boundaries. Returns a function that undoes it.
    """
    count = 0
    depth = 0
    lock = threading.Lock()
    originals = {name: getattr(Lake, name) for name in WRITE_METHODS}

    def wrap(name: str, original: Any) -> Any:
        def wrapper(self: Lake, table: str, *args: Any, **kwargs: Any) -> Any:
            nonlocal count, depth
            if depth:  # a write inside a write: the outer one reports the commit
                return original(self, table, *args, **kwargs)
            before = self.version(table)
            depth += 1
            try:
                result = original(self, table, *args, **kwargs)
            finally:
                depth -= 1
            if self.version(table) != before:
                with lock:
                    count += 1
                    number = count
                on_commit(number, name, table)
            return result

        return wrapper

    for name, original in originals.items():
        setattr(Lake, name, wrap(name, original))

    def undo() -> None:
        for name, original in originals.items():
            setattr(Lake, name, original)

    return undo


class Crash(BaseException):
    """The process dying right after a commit, in this process: raised from the commit hook.

    A ``BaseException``, so no ``except Exception`` on the way up handles it, and nothing in
    the transform writes in a ``finally``: what is in the lake is exactly what a killed process
    leaves (the fault child proves it with ``os._exit`` at sampled boundaries).
    """


def crash_after(commit: int) -> Callable[[], None]:
    """Raise :class:`Crash` right after the ``commit``-th Delta commit; returns the undo."""

    def on_commit(count: int, method: str, table: str) -> None:
        if count == commit:
            raise Crash(f"crashed after commit {count} ({method} {table})")

    return instrument_commits(on_commit)


@dataclass(frozen=True)
class Outcome:
    """What a transform left behind that the fault tests compare.

    ``tables``: every silver and gold table and the live rows of each staging log (sorted);
    ``quarantine``: ``ops/quarantine`` without the run id and time (sorted);
    ``metrics``: the newest transform row counts in ``ops/volume_metrics`` (what publish holds
    read); ``holds``: :func:`tasks.publish.publish_holds`.
    """

    tables: dict[str, pl.DataFrame]
    quarantine: pl.DataFrame
    metrics: pl.DataFrame
    holds: dict[tuple[str, str], str]

    def assert_same(self, other: Outcome, *, where: str) -> None:
        assert self.holds == other.holds, f"{where}: publish holds differ"
        assert self.quarantine.height == other.quarantine.height, (
            f"{where}: ops/quarantine has {self.quarantine.height} rows, "
            f"expected {other.quarantine.height}"
        )
        assert self.quarantine.equals(other.quarantine), f"{where}: ops/quarantine differs"
        assert self.metrics.equals(other.metrics), (
            f"{where}: volume metrics differ:\n{self.metrics}\nexpected\n{other.metrics}"
        )
        assert self.tables.keys() == other.tables.keys()
        for table, frame in self.tables.items():
            assert frame.equals(other.tables[table]), f"{where}: {table} differs"


@dataclass
class StagingWorld:
    """Sample data, its ingested template lake(s), and how to run the transform on a copy."""

    root: Path
    data_dir: Path
    templates: dict[str, Path]
    copies: int = 0

    def env(self, lake: Path) -> dict[str, str]:
        return {
            "AUDIENCE_LAKE_LAKE_URI": str(lake),
            "AUDIENCE_LAKE_SANDBOX_DIR": str(self.data_dir),
            "AUDIENCE_LAKE_SECRET_CRM_CLIENT_SECRET": CRM_SECRET,
            "AUDIENCE_LAKE_CRM_CLIENT_ID": "staging-client",
            "AUDIENCE_LAKE_SECRET_MAILCHIMP_API_KEY": "staging-key-us1",
        }

    def copy(self, template: str) -> Path:
        """A private copy of a template lake."""
        self.copies += 1
        target = self.root / f"lake-{template}-{self.copies}"
        shutil.copytree(self.templates[template], target)
        return target

    def transform(self, lake: Path, *, run_id: str) -> None:
        """The transform on ``lake``, in this process, to the end."""
        from prefect.logging import disable_run_logger

        with environment(self.env(lake)), disable_run_logger():
            run_transform(run_id=run_id)

    def outcome(self, lake_path: Path) -> Outcome:
        from tasks.core.config import load_pipeline
        from tasks.core.contracts import QUARANTINE_SCHEMA
        from tasks.core.incremental import live_rows
        from tasks.core.tables import (
            AUDIENCE,
            CONTACTS,
            EVENTS,
            FEATURES,
            HOLDOUTS,
            ORDERS,
            STAGED,
        )
        from tasks.publish import publish_holds
        from tasks.volume import VOLUME_METRICS

        with environment(self.env(lake_path)):
            config = load_pipeline(CONFIG)
            lake = Lake(str(lake_path))
            built = (CONTACTS, ORDERS, EVENTS, FEATURES, AUDIENCE, HOLDOUTS)
            tables = {t: lake.read(t) for t in built}
            tables |= {t: live_rows(lake.scan(t)).collect() for t in STAGED.values()}
            quarantine = (
                lake.read("ops/quarantine")
                if lake.exists("ops/quarantine")
                else pl.DataFrame(schema=QUARANTINE_SCHEMA)
            )
            assert quarantine.height == quarantine["quarantine_id"].n_unique(), (
                "a quarantine record was written twice"
            )
            metrics = lake.read(VOLUME_METRICS).filter(~pl.col("table").str.starts_with("bronze/"))
            latest = metrics.filter(pl.col("measured_at") == metrics["measured_at"].max())
            return Outcome(
                tables={t: df.sort(pl.all()) for t, df in tables.items()},
                quarantine=quarantine.drop("run_id", "quarantined_at").sort(pl.all()),
                metrics=latest.select("table", "source", "segment", "rows", "quarantined").sort(
                    pl.all()
                ),
                holds=publish_holds(lake, config),
            )


def _break_emails(crm_file: Path, *, every: int) -> int:
    """Replace every ``every``-th CRM email with a string that is no address; returns how many."""
    records = json.loads(crm_file.read_text(encoding="utf-8"))
    broken = 0
    for n, record in enumerate(records):
        if n % every == 0:
            record["properties"]["email"] = f"broken-{record['id']}.example.com"
            broken += 1
    crm_file.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return broken


def _ingest(world: StagingWorld, lake: Path, crm: CrmStandIn, data_dir: Path) -> None:
    from prefect.logging import disable_run_logger

    from tasks.core.config import load_pipeline
    from tasks.ingest import ingest_source

    env = world.env(lake) | {
        "AUDIENCE_LAKE_CRM_URL": crm.url,
        "AUDIENCE_LAKE_SANDBOX_DIR": str(data_dir),
    }
    with environment(env), disable_run_logger():
        config = load_pipeline(CONFIG)
        for name, source in config.sources.items():
            ingest_source.fn(name, source, run_id="ingest", started_at=datetime.now(UTC))


def _crm(data_dir: Path) -> CrmStandIn:
    return CrmStandIn.from_file(
        data_dir / "crm_contacts.json", client_id="staging-client", client_secret=CRM_SECRET
    )


def build_staging_world(root: Path, *, contacts: int, seed: int) -> Iterator[StagingWorld]:
    """Templates, each a lake with every source ingested (each from its own copy of the data):

    * ``clean``: the sample data as generated (about 3 % invalid CRM emails: no hold);
    * ``broken``: the same with every 2nd CRM email broken (an uninterrupted run holds);
    * ``changed``: ``clean`` after one complete transform, then a change ingested that breaks
      every 2nd CRM email (the incremental run that follows holds);
    * ``fixed``: ``changed`` after its transform, then the CRM's emails put back and ingested
      (the incremental run that follows no longer holds).
    """
    sample = generate(root / "sample", contacts=contacts, seed=seed)
    world = StagingWorld(root=root, data_dir=sample.out_dir, templates={})
    for name in ("clean", "broken"):
        data_dir = root / f"data-{name}"
        shutil.copytree(sample.out_dir, data_dir)
        if name == "broken":
            _break_emails(data_dir / "crm_contacts.json", every=2)
        lake = root / f"template-{name}"
        with _crm(data_dir) as crm:
            _ingest(world, lake, crm, data_dir)
        world.templates[name] = lake
    changed, data_dir = root / "template-changed", root / "data-changed"
    shutil.copytree(world.templates["clean"], changed)
    shutil.copytree(root / "data-clean", data_dir)
    world.transform(changed, run_id="first")
    fixed = root / "template-fixed"
    with _crm(data_dir) as crm:
        emails = {c["id"]: c["properties"].get("email") for c in crm.contacts()}
        for n, contact_id in enumerate(emails):
            if n % 2 == 0:
                broken = f"broken-{contact_id}.example.com"
                crm.upsert_contact({"email": broken}, id=contact_id)
        _ingest(world, changed, crm, data_dir)
        world.templates["changed"] = changed
        # The day after: the broken load was transformed, then the CRM put every email back.
        shutil.copytree(changed, fixed)
        world.transform(fixed, run_id="broken-day")
        for n, (contact_id, email) in enumerate(emails.items()):
            if n % 2 == 0:
                crm.upsert_contact({"email": email}, id=contact_id)
        _ingest(world, fixed, crm, data_dir)
        world.templates["fixed"] = fixed
    yield world
