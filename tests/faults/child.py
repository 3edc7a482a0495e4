"""Subprocess entry point for fault tests: run the real ingest or transform, dying on cue.

``python -m tests.faults.child [SPEC_JSON]`` (the spec as an argument or one line on stdin)
runs, against the lake named by ``AUDIENCE_LAKE_LAKE_URI`` and with Prefect's run logger
disabled (no Prefect server is involved):

* ``spec["job"] == "ingest"`` (the default): ``tasks.ingest.ingest_source`` (the Prefect task's
  plain function) for each source named in ``spec["sources"]``;
* ``spec["job"] == "transform"``: the transform flow's tasks in the flow's order
  (:func:`tests.faults.staging.run_transform`).

It prints one line per event, flushed, so the parent can follow along and kill it at a precise
point::

    warm                      imports done, waiting for the spec on stdin
    ready                     spec read, about to ingest
    commit <n> <method> <table> <rows>    a lake write returned (n counts every write)
    done <json reports>

Faults (``spec["fault"]``), injected here in the child, never in production code:

* ``{"kind": "exit_after_commits", "n": N}`` — ``os._exit`` right after the N-th lake write
  returned (the commit is durable; nothing after it ran). For the ingest job every call of a
  writing method counts; for the transform job only calls that made a Delta commit (the
  table's version moved), so N enumerates the run's commit boundaries exactly;
* ``{"kind": "exit_before_watermark", "source": S}`` — ``os._exit`` when the ingest of ``S`` has
  written everything and reads its watermark back for the report;
* ``{"kind": "none"}`` — run to the end (the parent may still SIGKILL it at any moment).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

EXIT_CODE = 97  # distinguishable from a crash of the interpreter itself


def _instrument(fault: dict[str, Any]) -> None:
    from tasks import ingest
    from tasks.connectors.lake import Lake

    commits = 0
    for method in ("append_once", "merge", "insert_new"):
        original = getattr(Lake, method, None)
        if original is None:
            continue

        def wrapper(
            self: Lake, table: str, df: Any, *args: Any, _orig: Any = original,
            _name: str = method, **kwargs: Any,
        ) -> Any:  # fmt: skip
            nonlocal commits
            result = _orig(self, table, df, *args, **kwargs)
            commits += 1
            print(f"commit {commits} {_name} {table} {df.height}", flush=True)
            if fault.get("kind") == "exit_after_commits" and commits == fault["n"]:
                os._exit(EXIT_CODE)
            return result

        setattr(Lake, method, wrapper)

    if fault.get("kind") == "exit_before_watermark":
        calls: dict[str, int] = {}
        original_watermark = ingest.committed_watermark

        def watermark(lake: Lake, table: str, cursor_field: str | None) -> str | None:
            calls[table] = calls.get(table, 0) + 1
            # The 1st call reads `since`; the 2nd is the read-back after every write.
            if table == f"bronze/{fault['source']}" and calls[table] == 2:
                print(f"exit before watermark {table}", flush=True)
                os._exit(EXIT_CODE)
            return original_watermark(lake, table, cursor_field)

        ingest.committed_watermark = watermark


def main(argv: list[str]) -> int:
    from prefect.logging import disable_run_logger

    from tasks.core.config import load_pipeline
    from tasks.ingest import ingest_source
    from tests.faults.staging import instrument_commits, run_transform

    # Warm: the imports (seconds) are done before the spec arrives, so a pool of warm children
    # keeps them out of the tests' wall time. EOF on stdin means "not needed after all".
    print("warm", flush=True)
    line = sys.stdin.readline() if len(argv) < 2 else argv[1]
    if not line.strip():
        return 0
    spec: dict[str, Any] = json.loads(line)
    os.environ.update(spec.get("env") or {})
    if spec.get("job") == "transform":
        fault = spec.get("fault") or {}
        exit_at = fault.get("n") if fault.get("kind") == "exit_after_commits" else None

        def on_commit(count: int, method: str, table: str) -> None:
            print(f"commit {count} {method} {table}", flush=True)
            if count == exit_at:
                os._exit(EXIT_CODE)

        instrument_commits(on_commit)
        print("ready", flush=True)
        with disable_run_logger():
            run_transform(run_id=spec["run_id"])
        print("done", flush=True)
        return 0
    config = load_pipeline(spec["config"])
    _instrument(spec.get("fault") or {})
    print("ready", flush=True)
    reports = []
    with disable_run_logger():
        for name in spec["sources"]:
            report = ingest_source.fn(
                name, config.sources[name], run_id=spec["run_id"], started_at=datetime.now(UTC)
            )
            reports.append(asdict(report))
    print("done " + json.dumps(reports), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
