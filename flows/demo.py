"""``audience-lake demo``: the whole job on embedded defaults, with zero configuration.

Generates the seeded sample data, starts the CRM and Mailchimp stand-ins on 127.0.0.1, and runs
the ``pipeline`` flow (Prefect in ephemeral mode) against a local lake directory. Running it
again publishes nothing new: the sync ledger in the lake remembers what was sent.

The demo's event receiver (``web_events`` in ``pipeline.yaml``) verifies signatures like any
other: the demo generates its own signing key once per data directory
(``<data>/web_events_hmac.secret``, readable by the owner only) and exports it as
``AUDIENCE_LAKE_SECRET_WEB_EVENTS_HMAC`` unless that is already set.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from flows.pipeline import PipelineReport, pipeline
from flows.summary import lake_summary
from infra.sandbox.crm import CrmStandIn
from infra.sandbox.generate import generate
from infra.sandbox.mailchimp import MailchimpStandIn
from tasks.core.config import load_pipeline
from tasks.resources import open_lake

DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-secret"
DEMO_MAILCHIMP_KEY = "demo-key-us1"
EVENTS_SECRET_ENV = "AUDIENCE_LAKE_SECRET_WEB_EVENTS_HMAC"
EVENTS_SECRET_FILE = "web_events_hmac.secret"


def demo_events_secret(data_dir: Path) -> str:
    """The demo receiver's signing key: generated once per data directory, owner-only."""
    path = data_dir / EVENTS_SECRET_FILE
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key + "\n")
    return key


def run_demo(
    *, config: Path, data_dir: Path, lake_dir: Path, contacts: int, seed: int
) -> PipelineReport:
    manifest = generate(data_dir, contacts=contacts, seed=seed)
    print(f"sample data: {data_dir} ({manifest})")
    os.environ.update(
        {
            "AUDIENCE_LAKE_SANDBOX_DIR": str(data_dir),
            "AUDIENCE_LAKE_CRM_CLIENT_ID": DEMO_CLIENT_ID,
            "AUDIENCE_LAKE_SECRET_CRM_CLIENT_SECRET": DEMO_CLIENT_SECRET,
            "AUDIENCE_LAKE_SECRET_MAILCHIMP_API_KEY": DEMO_MAILCHIMP_KEY,
        }
    )
    os.environ.setdefault("AUDIENCE_LAKE_LAKE_URI", str(lake_dir))
    if not os.environ.get(EVENTS_SECRET_ENV):
        os.environ[EVENTS_SECRET_ENV] = demo_events_secret(data_dir)
    crm = CrmStandIn.from_file(
        data_dir / "crm_contacts.json", client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET
    )
    with crm, MailchimpStandIn(api_key=DEMO_MAILCHIMP_KEY) as mailchimp:
        os.environ["AUDIENCE_LAKE_CRM_URL"] = crm.url
        os.environ["AUDIENCE_LAKE_MAILCHIMP_URL"] = mailchimp.url
        pipeline_config = load_pipeline(config)
        for destination in pipeline_config.destinations.values():
            for list_id in destination.list_ids():
                mailchimp.add_list(list_id)
        print(f"stand-ins: CRM {crm.url}  Mailchimp {mailchimp.url}")
        report = pipeline(config_path=str(config))
    print()
    print(lake_summary(open_lake(), report))
    return report
