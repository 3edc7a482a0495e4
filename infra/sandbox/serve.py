"""Run the CRM, Mailchimp, Klaviyo and HubSpot (destination) stand-ins until Ctrl-C (or SIGTERM).

``python -m infra.sandbox.serve [--data DIR] [--config pipeline.yaml] [--host H]
[--crm-port P] [--mailchimp-port P] [--klaviyo-port P] [--hubspot-port P] [--lists a,b]``

Every default comes from the same environment the worker reads (``infra/.env.example``), so the
stand-ins answer exactly where and how the pipeline calls them:

* ``--data``: ``$AUDIENCE_LAKE_SANDBOX_DIR``; the directory must hold ``crm_contacts.json``
  (``python -m infra.sandbox.generate --out DIR`` or ``infra/bin/sandbox-data.sh``);
* ``--crm-port`` / ``--mailchimp-port`` / ``--klaviyo-port``: the port of
  ``$AUDIENCE_LAKE_CRM_URL`` / ``$AUDIENCE_LAKE_MAILCHIMP_URL`` / ``$AUDIENCE_LAKE_KLAVIYO_URL``
  (8711 / 8712 / 8713 when unset);
* credentials: ``$AUDIENCE_LAKE_CRM_CLIENT_ID``, ``$AUDIENCE_LAKE_SECRET_CRM_CLIENT_SECRET``,
  ``$AUDIENCE_LAKE_SECRET_MAILCHIMP_API_KEY``, ``$AUDIENCE_LAKE_SECRET_KLAVIYO_API_KEY`` (the
  demo's values when unset);
* ``--lists``: every Mailchimp list id the Mailchimp destinations of ``--config`` publish to, so
  a list the pipeline sends to always exists; the Klaviyo stand-in gets the Klaviyo lists;
* HubSpot: ``--hubspot-port`` is the port of ``$AUDIENCE_LAKE_HUBSPOT_URL`` (8714 when unset),
  the token ``$AUDIENCE_LAKE_SECRET_HUBSPOT_TOKEN``; its lists and subscription types are those
  the ``kind: hubspot`` destinations of ``--config`` name.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from infra.sandbox.crm import CrmStandIn
from infra.sandbox.generate import CRM_FILE
from infra.sandbox.hubspot_marketing import DEFAULT_SUBSCRIPTION_ID, HubSpotMarketingStandIn
from infra.sandbox.klaviyo import KlaviyoStandIn
from infra.sandbox.mailchimp import MailchimpStandIn
from tasks.core.config import load_pipeline

DEFAULT_CRM_PORT = 8711
DEFAULT_MAILCHIMP_PORT = 8712
DEFAULT_KLAVIYO_PORT = 8713
DEFAULT_CLIENT_ID = "demo-client"
DEFAULT_CLIENT_SECRET = "demo-secret"
DEFAULT_API_KEY = "demo-key-us1"
DEFAULT_KLAVIYO_KEY = "pk_demo_klaviyo"
DEFAULT_HUBSPOT_PORT = 8714
DEFAULT_HUBSPOT_TOKEN = "demo-hubspot-token"


def port_of(url: str | None, default: int) -> int:
    """The port a stand-in URL names (``http://sandbox-apis:8711`` -> 8711), else ``default``."""
    if not url:
        return default
    port = urlsplit(url).port
    return default if port is None else port


def config_list_ids(config: Path, kind: str | None = None) -> list[str]:
    """Every list id the destinations of ``config`` (of ``kind``, when given) publish to, in
    config order, deduplicated."""
    # env={}: the list ids are literal; no secret or URL is needed to read them.
    pipeline = load_pipeline(str(config), env={})
    ids = [
        list_id
        for destination in pipeline.destinations.values()
        if kind is None or destination.kind == kind
        for list_id in destination.list_ids()
    ]
    return list(dict.fromkeys(ids))


def config_subscription_ids(config: Path) -> list[int]:
    """The email subscription types the HubSpot destinations of ``config`` name (or a default)."""
    pipeline = load_pipeline(str(config), env={})
    ids = [d.subscription_type_id for d in pipeline.destinations.values() if d.kind == "hubspot"]
    return list(dict.fromkeys(ids)) or [DEFAULT_SUBSCRIPTION_ID]


def _default_config(env: Mapping[str, str]) -> Path:
    home = env.get("AUDIENCE_LAKE_HOME")
    return Path(home) / "pipeline.yaml" if home else Path("pipeline.yaml")


def _parse_args(argv: Sequence[str] | None, env: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Serve the sandbox CRM, Mailchimp, Klaviyo and HubSpot stand-ins."
    )
    data = env.get("AUDIENCE_LAKE_SANDBOX_DIR")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(data) if data else None,
        required=not data,
        help="directory from generate (default $AUDIENCE_LAKE_SANDBOX_DIR)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=_default_config(env),
        help="pipeline config whose Mailchimp lists to serve (default pipeline.yaml)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument(
        "--crm-port",
        type=int,
        default=port_of(env.get("AUDIENCE_LAKE_CRM_URL"), DEFAULT_CRM_PORT),
        help="CRM port (default: the port of $AUDIENCE_LAKE_CRM_URL, else 8711)",
    )
    parser.add_argument(
        "--mailchimp-port",
        type=int,
        default=port_of(env.get("AUDIENCE_LAKE_MAILCHIMP_URL"), DEFAULT_MAILCHIMP_PORT),
        help="Mailchimp port (default: the port of $AUDIENCE_LAKE_MAILCHIMP_URL, else 8712)",
    )
    parser.add_argument(
        "--klaviyo-port",
        type=int,
        default=port_of(env.get("AUDIENCE_LAKE_KLAVIYO_URL"), DEFAULT_KLAVIYO_PORT),
        help="Klaviyo port (default: the port of $AUDIENCE_LAKE_KLAVIYO_URL, else 8713)",
    )
    parser.add_argument(
        "--klaviyo-api-key",
        default=env.get("AUDIENCE_LAKE_SECRET_KLAVIYO_API_KEY") or DEFAULT_KLAVIYO_KEY,
        help="Klaviyo private API key (default $AUDIENCE_LAKE_SECRET_KLAVIYO_API_KEY)",
    )
    parser.add_argument(
        "--hubspot-port",
        type=int,
        default=port_of(env.get("AUDIENCE_LAKE_HUBSPOT_URL"), DEFAULT_HUBSPOT_PORT),
        help="HubSpot port (default: the port of $AUDIENCE_LAKE_HUBSPOT_URL, else 8714)",
    )
    parser.add_argument(
        "--hubspot-token",
        default=env.get("AUDIENCE_LAKE_SECRET_HUBSPOT_TOKEN") or DEFAULT_HUBSPOT_TOKEN,
        help="HubSpot private app token (default $AUDIENCE_LAKE_SECRET_HUBSPOT_TOKEN)",
    )
    parser.add_argument(
        "--lists",
        default=None,
        help="comma-separated Mailchimp list ids (default: every list --config publishes to)",
    )
    parser.add_argument(
        "--client-id",
        default=env.get("AUDIENCE_LAKE_CRM_CLIENT_ID") or DEFAULT_CLIENT_ID,
        help="CRM OAuth client id (default $AUDIENCE_LAKE_CRM_CLIENT_ID)",
    )
    parser.add_argument(
        "--client-secret",
        default=env.get("AUDIENCE_LAKE_SECRET_CRM_CLIENT_SECRET") or DEFAULT_CLIENT_SECRET,
        help="CRM OAuth client secret (default $AUDIENCE_LAKE_SECRET_CRM_CLIENT_SECRET)",
    )
    parser.add_argument(
        "--api-key",
        default=env.get("AUDIENCE_LAKE_SECRET_MAILCHIMP_API_KEY") or DEFAULT_API_KEY,
        help="Mailchimp API key (default $AUDIENCE_LAKE_SECRET_MAILCHIMP_API_KEY)",
    )
    return parser.parse_args(argv)


def build_servers(
    args: argparse.Namespace,
) -> tuple[CrmStandIn, MailchimpStandIn, HubSpotMarketingStandIn]:
    """Create (but do not start) the stand-ins from parsed arguments."""
    crm_file = args.data / CRM_FILE
    if not crm_file.is_file():
        raise SystemExit(
            f"{crm_file} not found; create it with "
            f"`python -m infra.sandbox.generate --out {args.data}`"
        )
    crm = CrmStandIn.from_file(
        crm_file,
        client_id=args.client_id,
        client_secret=args.client_secret,
        host=args.host,
        port=args.crm_port,
    )
    if args.lists is None:
        lists = config_list_ids(args.config, kind="mailchimp")
    else:
        lists = [name.strip() for name in args.lists.split(",") if name.strip()]
    mailchimp = MailchimpStandIn(
        api_key=args.api_key, lists=lists, host=args.host, port=args.mailchimp_port
    )
    hubspot = HubSpotMarketingStandIn(
        token=args.hubspot_token,
        lists=config_list_ids(args.config, "hubspot"),
        subscription_ids=config_subscription_ids(args.config),
        host=args.host,
        port=args.hubspot_port,
    )
    return crm, mailchimp, hubspot


def build_klaviyo(args: argparse.Namespace) -> KlaviyoStandIn:
    """Create (but do not start) the Klaviyo stand-in with the config's Klaviyo lists."""
    return KlaviyoStandIn(
        api_key=args.klaviyo_api_key,
        lists=config_list_ids(args.config, kind="klaviyo"),
        host=args.host,
        port=args.klaviyo_port,
    )


def _interrupt(signum: int, frame: object) -> None:
    """Turn SIGTERM into the same clean shutdown as Ctrl-C."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Start the stand-ins, print their URLs and block until interrupted."""
    args = _parse_args(argv, os.environ)
    crm, mailchimp, hubspot = build_servers(args)
    klaviyo = build_klaviyo(args)
    signal.signal(signal.SIGTERM, _interrupt)
    with crm, mailchimp, klaviyo, hubspot:
        print(f"CRM (HubSpot-style):  {crm.url}  token: POST {crm.url}/oauth/v1/token", flush=True)
        print(f"  client_id={args.client_id}", flush=True)
        print(f"Mailchimp (v3):       {mailchimp.url}/3.0  lists: {mailchimp.list_ids}", flush=True)
        print(f"Klaviyo (2026-07-15): {klaviyo.url}/api  lists: {klaviyo.list_ids}", flush=True)
        print(f"HubSpot (destination): {hubspot.url}  lists: {hubspot.list_ids}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopping", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
