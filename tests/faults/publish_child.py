"""Subprocess entry point for publish fault tests: the real publish code, dying on cue.

``python -m tests.faults.publish_child`` reads a JSON spec on stdin and runs
:func:`tasks.publishing.publish_segment` (the body of the ``publish_audience`` task, with
Prefect's run logger disabled: no Prefect server is involved) for every audience of the config,
against the lake named by ``AUDIENCE_LAKE_LAKE_URI``. It prints, flushed::

    warm                                 imports done, waiting for the spec
    commit <n> ledger <rows> <statuses>  a sync-ledger commit returned
    commit <n> lease <key> <event>       a lease commit (claim, renewal, release) returned
    send <n> <list> <members>            a platform batch request returned
    report <json>                        one audience's PublishReport
    done

Faults (``spec["fault"]``), injected here, never in production code:
``{"kind": "exit_after_commits", "n": N}`` and ``{"kind": "exit_after_sends", "n": N}``
``os._exit`` right after the N-th commit (or platform batch) returned; ``{"kind": "none"}``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import asdict
from typing import Any

EXIT_CODE = 97


def _instrument(fault: dict[str, Any]) -> None:
    from tasks.connectors.destinations.mailchimp import Mailchimp
    from tasks.connectors.lake import Lake
    from tasks.connectors.leases import LeaseStore

    counts = {"commit": 0, "send": 0}
    lock = threading.Lock()  # a window's batches are sent (and counted) from several threads

    def point(kind: str, text: str) -> None:
        with lock:
            counts[kind] += 1
            print(f"{kind} {counts[kind]} {text}", flush=True)
            if fault.get("kind") == f"exit_after_{kind}s" and counts[kind] == fault["n"]:
                os._exit(EXIT_CODE)

    merge = Lake.merge

    def merged(self: Lake, table: str, df: Any, **kwargs: Any) -> Any:
        result = merge(self, table, df, **kwargs)
        if table == "ops/sync_ledger":
            point("commit", f"ledger {df.height} {','.join(sorted(set(df['status'])))}")
        return result

    commit = LeaseStore._commit

    def committed(self: LeaseStore, delta: Any, key: str, seq: int, holder: str, event: str,
                  *args: Any) -> bool:  # fmt: skip
        won: bool = commit(self, delta, key, seq, holder, event, *args)  # type: ignore[arg-type]
        if won:
            point("commit", f"lease {key} {event}")
        return won

    batch_call = Mailchimp._batch_call

    def sent(self: Mailchimp, list_id: str, wire: Any, stop: Any) -> Any:
        answer = batch_call(self, list_id, wire, stop)
        point("send", f"{list_id} {len(wire)}")
        return answer

    Lake.merge = merged  # type: ignore[method-assign]
    LeaseStore._commit = committed  # type: ignore[method-assign]
    Mailchimp._batch_call = sent  # type: ignore[method-assign,assignment]


def main() -> int:
    from prefect.logging import disable_run_logger

    from tasks.core.config import load_pipeline
    from tasks.publishing import publish_segment
    from tasks.resources import open_lake

    print("warm", flush=True)
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    spec: dict[str, Any] = json.loads(line)
    os.environ.update(spec.get("env") or {})
    config = load_pipeline(spec["config"])
    _instrument(spec.get("fault") or {})
    print("ready", flush=True)
    with disable_run_logger():
        for name, destination in config.destinations.items():
            for segment in destination.audiences:
                report = publish_segment(
                    open_lake(), name, destination, segment, run_id=spec["run_id"],
                    settings=config.publish,
                )  # fmt: skip
                print("report " + json.dumps(asdict(report)), flush=True)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
