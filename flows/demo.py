"""``audience-lake demo``: the whole job on embedded defaults, with zero configuration.

Generates the seeded sample data, starts the CRM stand-in and the Mailchimp, Klaviyo and HubSpot
stand-ins on 127.0.0.1, and runs the ``pipeline`` flow (Prefect in ephemeral mode) against a
local lake directory. Running it again publishes nothing new: the sync ledger in the lake
remembers what was sent (each member's mapped fields included).

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
from infra.sandbox.hubspot_marketing import HubSpotMarketingStandIn
from infra.sandbox.klaviyo import KlaviyoStandIn
from infra.sandbox.mailchimp import MailchimpStandIn
from tasks.core.config import PipelineConfig, load_pipeline
from tasks.resources import open_lake

DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-secret"
DEMO_MAILCHIMP_KEY = "demo-key-us1"
DEMO_KLAVIYO_KEY = "pk_demo_klaviyo"
DEMO_HUBSPOT_TOKEN = "demo-hubspot-token"
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


def lists_of(config: PipelineConfig, kind: str) -> list[str]:
    """The list ids the ``kind`` destinations of ``config`` publish to."""
    ids = [i for d in config.destinations.values() if d.kind == kind for i in d.list_ids()]
    return list(dict.fromkeys(ids))


def subscriptions_of(config: PipelineConfig) -> list[int]:
    """The HubSpot email subscription types ``config`` names."""
    ids = [d.subscription_type_id for d in config.destinations.values() if d.kind == "hubspot"]
    return list(dict.fromkeys(ids)) or [1001]


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
            "AUDIENCE_LAKE_SECRET_KLAVIYO_API_KEY": DEMO_KLAVIYO_KEY,
            "AUDIENCE_LAKE_SECRET_HUBSPOT_TOKEN": DEMO_HUBSPOT_TOKEN,
        }
    )
    os.environ.setdefault("AUDIENCE_LAKE_LAKE_URI", str(lake_dir))
    if not os.environ.get(EVENTS_SECRET_ENV):
        os.environ[EVENTS_SECRET_ENV] = demo_events_secret(data_dir)
    crm = CrmStandIn.from_file(
        data_dir / "crm_contacts.json", client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET
    )
    pipeline_config = load_pipeline(config, env={})
    mailchimp = MailchimpStandIn(
        api_key=DEMO_MAILCHIMP_KEY, lists=lists_of(pipeline_config, "mailchimp")
    )
    klaviyo = KlaviyoStandIn(api_key=DEMO_KLAVIYO_KEY, lists=lists_of(pipeline_config, "klaviyo"))
    hubspot = HubSpotMarketingStandIn(
        token=DEMO_HUBSPOT_TOKEN,
        lists=lists_of(pipeline_config, "hubspot"),
        subscription_ids=subscriptions_of(pipeline_config),
    )
    with crm, mailchimp, klaviyo, hubspot:
        os.environ["AUDIENCE_LAKE_CRM_URL"] = crm.url
        os.environ["AUDIENCE_LAKE_MAILCHIMP_URL"] = mailchimp.url
        os.environ["AUDIENCE_LAKE_KLAVIYO_URL"] = klaviyo.url
        os.environ["AUDIENCE_LAKE_HUBSPOT_URL"] = hubspot.url
        print(f"stand-ins: CRM {crm.url}  Mailchimp {mailchimp.url}  Klaviyo {klaviyo.url}  "
              f"HubSpot {hubspot.url}")  # fmt: skip
        report = pipeline(config_path=str(config))
    print()
    print(lake_summary(open_lake(), report))
    return report
