"""``audience-lake demo``: the whole job on embedded defaults, with zero configuration.

Generates the seeded sample data, starts the CRM and Mailchimp stand-ins on 127.0.0.1, and runs
the ``pipeline`` flow (Prefect in ephemeral mode) against a local lake directory. Running it
again publishes nothing new: the sync ledger in the lake remembers what was sent.
"""

from __future__ import annotations

import os
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
    crm = CrmStandIn.from_file(
        data_dir / "crm_contacts.json", client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET
    )
    with crm, MailchimpStandIn(api_key=DEMO_MAILCHIMP_KEY) as mailchimp:
        os.environ["AUDIENCE_LAKE_CRM_URL"] = crm.url
        os.environ["AUDIENCE_LAKE_MAILCHIMP_URL"] = mailchimp.url
        pipeline_config = load_pipeline(config)
        for destination in pipeline_config.destinations.values():
            for list_id in destination.audiences.values():
                mailchimp.add_list(list_id)
        print(f"stand-ins: CRM {crm.url}  Mailchimp {mailchimp.url}")
        report = pipeline(config_path=str(config))
    print()
    print(lake_summary(open_lake(), report))
    return report
