"""Deterministic, deliberately messy sample data for the Audience Lake sandbox.

``generate(out_dir, contacts=N, seed=S)`` writes the same bytes for the same arguments: every
random choice comes from one ``random.Random(seed)`` and every timestamp is derived from
:data:`REFERENCE_TIME`, never from the wall clock.

Files written under ``out_dir``::

    crm_contacts.json                 HubSpot-style contact objects (served by CrmStandIn)
    orders.db                         SQLite, table ``orders``
    drops/events/events-0001.ndjson   web/email events, several files, with duplicate deliveries
    drops/enrichment/enrichment-0001.csv, enrichment-0002.csv
    manifest.json                     the :class:`SampleManifest` (relative paths, counts)

Each source is built by its own module in :mod:`infra.sandbox.sample` (CRM, orders, events,
enrichment); this module draws them from the one seeded stream in a fixed order, writes the
files and the manifest, and keeps offering the names importers take from here.

Command line: ``python -m infra.sandbox.generate --contacts 2000 --seed 7 --out .demo/sample``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from random import Random
from typing import Any

from infra.sandbox.sample.common import ORDER_CATEGORIES, REFERENCE_TIME, iso_millis, iso_seconds
from infra.sandbox.sample.crm import CRM_PROPERTIES, INVALID_EMAILS, build_crm
from infra.sandbox.sample.enrichment import (
    ENRICHMENT_COLUMNS,
    build_enrichment,
    write_enrichment_files,
)
from infra.sandbox.sample.events import (
    EVENT_FIELDS,
    EVENT_TYPES,
    build_events,
    split_event_files,
    write_event_files,
)
from infra.sandbox.sample.orders import (
    ORDER_COLUMNS,
    build_orders,
    write_orders_db,
)

# Importers take these from here, wherever they are defined.
__all__ = [
    "CRM_FILE",
    "CRM_PROPERTIES",
    "ENRICHMENT_COLUMNS",
    "ENRICHMENT_DIR",
    "EVENTS_DIR",
    "EVENT_FIELDS",
    "EVENT_TYPES",
    "INVALID_EMAILS",
    "MANIFEST_FILE",
    "ORDERS_FILE",
    "ORDER_CATEGORIES",
    "ORDER_COLUMNS",
    "REFERENCE_TIME",
    "SampleManifest",
    "build_crm",
    "build_enrichment",
    "build_events",
    "build_orders",
    "generate",
    "iso_millis",
    "iso_seconds",
    "main",
    "split_event_files",
    "write_enrichment_files",
    "write_event_files",
    "write_orders_db",
]

CRM_FILE = "crm_contacts.json"
ORDERS_FILE = "orders.db"
EVENTS_DIR = Path("drops/events")
ENRICHMENT_DIR = Path("drops/enrichment")
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class SampleManifest:
    """What :func:`generate` wrote: paths (absolute) and row counts."""

    out_dir: Path
    crm_contacts: Path
    orders_db: Path
    event_files: tuple[Path, ...]
    enrichment_files: tuple[Path, ...]
    seed: int
    contacts: int
    people: int
    duplicate_contacts: int
    invalid_emails: int
    orders: int
    events: int
    duplicate_events: int
    enrichment_rows: int
    reference_time: datetime = REFERENCE_TIME

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict with paths relative to ``out_dir`` (stable across dirs)."""

        def rel(path: Path) -> str:
            return path.relative_to(self.out_dir).as_posix()

        return {
            "seed": self.seed,
            "reference_time": iso_seconds(self.reference_time),
            "crm_contacts": rel(self.crm_contacts),
            "orders_db": rel(self.orders_db),
            "event_files": [rel(p) for p in self.event_files],
            "enrichment_files": [rel(p) for p in self.enrichment_files],
            "counts": {
                "contacts": self.contacts,
                "people": self.people,
                "duplicate_contacts": self.duplicate_contacts,
                "invalid_emails": self.invalid_emails,
                "orders": self.orders,
                "events": self.events,
                "duplicate_events": self.duplicate_events,
                "enrichment_rows": self.enrichment_rows,
            },
        }


# -- entry points ---------------------------------------------------------------------------
def generate(out_dir: Path, *, contacts: int = 2000, seed: int = 7) -> SampleManifest:
    """Write the sample data set into ``out_dir`` (created if needed) and describe it.

    The output is byte-identical for equal ``contacts`` and ``seed``. Files from an earlier
    run in the same directory are replaced.
    """
    if contacts < 1:
        raise ValueError(f"generate(contacts=...) must be at least 1, got {contacts}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = Random(seed)
    records, people, duplicates = build_crm(rng, contacts)
    orders = build_orders(rng, people)
    event_files = split_event_files(rng, build_events(rng, people, contacts))
    enrichment = build_enrichment(rng, people)

    crm_path = out_dir / CRM_FILE
    crm_path.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", "utf-8")
    write_orders_db(out_dir / ORDERS_FILE, orders)
    manifest = SampleManifest(
        out_dir=out_dir,
        crm_contacts=crm_path,
        orders_db=out_dir / ORDERS_FILE,
        event_files=tuple(write_event_files(out_dir / EVENTS_DIR, event_files)),
        enrichment_files=tuple(write_enrichment_files(out_dir / ENRICHMENT_DIR, enrichment)),
        seed=seed,
        contacts=len(records),
        people=len(people),
        duplicate_contacts=duplicates,
        invalid_emails=sum(1 for p in people if p.email is None),
        orders=len(orders),
        events=sum(len(chunk) for chunk in event_files),
        duplicate_events=sum(len(chunk) for chunk in event_files)
        - len({e["event_id"] for chunk in event_files for e in chunk}),
        enrichment_rows=sum(len(part) for part in enrichment),
    )
    manifest_text = json.dumps(manifest.to_json(), indent=2) + "\n"
    (out_dir / MANIFEST_FILE).write_text(manifest_text, "utf-8")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m infra.sandbox.generate --contacts N --seed S --out DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--contacts", type=int, default=2000, help="CRM records (default 2000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    args = parser.parse_args(argv)
    manifest = generate(args.out, contacts=args.contacts, seed=args.seed)
    print(json.dumps(manifest.to_json()["counts"], indent=2))
    print(f"wrote sample data to {manifest.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
