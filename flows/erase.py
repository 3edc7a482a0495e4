"""``erase`` flow: answer the erasure requests dropped in a folder.

A request is a text file in the drop folder (``AUDIENCE_LAKE_ERASURE_DIR``, or the
``drop_dir`` parameter): one email per line, blank lines and ``#`` comments ignored. Each file
is one request; its id is derived from the file's name and content, so a rerun after a crash
(same file, same id) completes the job instead of starting another. Once the receipts are in
``ops/erasure_log`` the file is deleted: it holds the emails, and nothing else of the erasure
does. Emails are never flow parameters (Prefect stores parameters with the run and shows them).

See :mod:`tasks.erasure` for what an erasure does; ``audience-lake erase`` runs the same
erasure from the command line.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.audit import audited
from flows.common import current_run_id, load_config, table_artifact, utc_now
from tasks.erasure import Receipt, erase_people
from tasks.errors import ConfigError
from tasks.resources import open_lake, pepper

DROP_DIR_ENV = "AUDIENCE_LAKE_ERASURE_DIR"
MAX_REQUEST_FILES = 1000  # per run; the rest waits for the next run


def read_request_file(path: Path) -> list[str]:
    """The emails of one request file (one per line; blank lines and ``#`` comments skipped)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def request_id_of(path: Path) -> str:
    """A stable id for a dropped request: its file name and a digest of its content."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"file-{path.stem[:40]}-{digest}"


def receipt_rows(receipts: list[Receipt]) -> list[dict[str, Any]]:
    """Receipts for an artifact or the CLI (contact keys only, never an email)."""
    rows = []
    for receipt in receipts:
        row = asdict(receipt)
        row["tables"] = len(receipt.tables)
        row["platforms"] = "; ".join(f"{k}: {v}" for k, v in receipt.platforms.items())
        rows.append(row)
    return rows


@flow(name="erase", log_prints=True)
@audited
def erase(config_path: str | None = None, drop_dir: str | None = None) -> list[Receipt]:
    """Erase the people named by the request files in the drop folder.

    Args:
        config_path: The pipeline.yaml to use (empty: the AUDIENCE_LAKE_CONFIG setting).
        drop_dir: Folder of request files (empty: the AUDIENCE_LAKE_ERASURE_DIR setting).
    """
    folder = drop_dir or os.environ.get(DROP_DIR_ENV)
    if not folder:
        raise ConfigError(f"erase: no drop folder (set {DROP_DIR_ENV} or pass drop_dir)")
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"erase: drop folder {root} does not exist")
    logger = get_run_logger()
    config = load_config(config_path)
    lake = open_lake()
    secret, version = pepper()
    run_id = current_run_id()
    receipts: list[Receipt] = []
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    for path in files[:MAX_REQUEST_FILES]:
        request = request_id_of(path)
        done = erase_people(
            lake,
            config,
            read_request_file(path),
            pepper=secret,
            version=version,
            run_id=f"{run_id}:{request}",
            now=utc_now(),
            request_id=request,
            origin=f"request file {path.name}",
            log=logger.info,
        )
        receipts.extend(done)
        path.unlink()  # the receipts are written: the emails go
        logger.info("erase: request %s answered (%d receipt(s))", request, len(done))
    table_artifact("erasure-receipts", receipt_rows(receipts), "Erasure receipts (contact keys)")
    return receipts
