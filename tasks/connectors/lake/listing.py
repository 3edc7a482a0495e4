"""Finding the Delta tables under a lake root, on a local disk or in an S3 bucket.

A table is a ``<layer>/<name>`` folder holding a ``_delta_log``; anything else under the root
(hidden folders, stray files, names that are not lowercase ``[a-z0-9_]``) is ignored.
"""

from __future__ import annotations

import os
import re

from tasks.connectors.s3 import parse_duration_seconds, s3_client, split_s3_uri

__all__ = ["TABLE_NAME", "list_local_tables", "list_s3_tables"]

TABLE_NAME = re.compile(r"[a-z0-9_]+/[a-z0-9_]+")


def list_local_tables(root: str) -> list[str]:
    """The ``layer/name`` of every Delta table under the local directory ``root``."""
    if not os.path.isdir(root):
        return []
    found: list[str] = []
    with os.scandir(root) as layers:
        for layer in layers:
            if not layer.is_dir() or layer.name.startswith("."):
                continue
            with os.scandir(layer.path) as names:
                for name in names:
                    candidate = f"{layer.name}/{name.name}"
                    log = os.path.join(name.path, "_delta_log")
                    if TABLE_NAME.fullmatch(candidate) and os.path.isdir(log):
                        found.append(candidate)
    return found


def list_s3_tables(root: str, options: dict[str, str]) -> list[str]:
    """The ``layer/name`` of every Delta table under ``s3://bucket/prefix`` ``root``."""
    bucket, prefix = split_s3_uri(root)
    base = f"{prefix}/" if prefix else ""
    connect = parse_duration_seconds(options.get("connect_timeout", "")) or 3.0
    client = s3_client(options, connect_timeout=connect, read_timeout=30.0)
    paginator = client.get_paginator("list_objects_v2")

    def children(under: str) -> list[str]:
        names: list[str] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=under, Delimiter="/"):
            for entry in page.get("CommonPrefixes", []):
                child = entry.get("Prefix", "")[len(under) :].rstrip("/")
                if child:
                    names.append(child)
        return names

    found: list[str] = []
    for layer in children(base):
        for name in children(f"{base}{layer}/"):
            candidate = f"{layer}/{name}"
            if not TABLE_NAME.fullmatch(candidate):
                continue
            log = client.list_objects_v2(
                Bucket=bucket, Prefix=f"{base}{candidate}/_delta_log/", MaxKeys=1
            )
            if log.get("KeyCount", 0):
                found.append(candidate)
    return found
