"""Run the CRM and Mailchimp stand-ins until Ctrl-C.

``python -m infra.sandbox.serve --data DIR [--crm-port 8711] [--mailchimp-port 8712]
[--lists a,b]`` — ``DIR`` must contain ``crm_contacts.json`` (see
``python -m infra.sandbox.generate --out DIR``).
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

from infra.sandbox.crm import CrmStandIn
from infra.sandbox.generate import CRM_FILE
from infra.sandbox.mailchimp import MailchimpStandIn

DEFAULT_CRM_PORT = 8711
DEFAULT_MAILCHIMP_PORT = 8712
DEFAULT_LISTS = "newsletter"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the sandbox CRM and Mailchimp stand-ins.")
    parser.add_argument("--data", type=Path, required=True, help="directory from generate")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--crm-port", type=int, default=DEFAULT_CRM_PORT)
    parser.add_argument("--mailchimp-port", type=int, default=DEFAULT_MAILCHIMP_PORT)
    parser.add_argument("--lists", default=DEFAULT_LISTS, help="comma-separated Mailchimp list ids")
    parser.add_argument("--client-id", default="demo-client")
    parser.add_argument("--client-secret", default="demo-secret")
    parser.add_argument("--api-key", default="demo-key-us1")
    return parser.parse_args(argv)


def build_servers(args: argparse.Namespace) -> tuple[CrmStandIn, MailchimpStandIn]:
    """Create (but do not start) both stand-ins from parsed arguments."""
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
    lists = [name.strip() for name in args.lists.split(",") if name.strip()]
    mailchimp = MailchimpStandIn(
        api_key=args.api_key, lists=lists, host=args.host, port=args.mailchimp_port
    )
    return crm, mailchimp


def _interrupt(signum: int, frame: object) -> None:
    """Turn SIGTERM into the same clean shutdown as Ctrl-C."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Start both stand-ins, print their URLs and block until interrupted."""
    args = _parse_args(argv)
    crm, mailchimp = build_servers(args)
    signal.signal(signal.SIGTERM, _interrupt)
    with crm, mailchimp:
        print(f"CRM (HubSpot-style):  {crm.url}  token: POST {crm.url}/oauth/v1/token", flush=True)
        print(f"  client_id={args.client_id} client_secret={args.client_secret}", flush=True)
        print(f"Mailchimp (v3):       {mailchimp.url}/3.0  lists: {mailchimp.list_ids}", flush=True)
        print(f"  api key (Basic password or Bearer): {args.api_key}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopping", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
