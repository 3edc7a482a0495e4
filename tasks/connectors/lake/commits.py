"""What a lake commit carries besides data: custom metadata and Delta app transactions.

An app transaction (``app_id``, ``version``) is recorded in the same commit as the rows it
describes, so "written" and "recorded as written" cannot disagree after a crash. delta-rs stores
transaction ids but does not skip a batch already committed: :func:`batch_committed` is the
check a writer makes first, and delta-rs rejects (``CommitFailedError``) a commit whose app id a
concurrent commit used since the writer read the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from deltalake import CommitProperties, DeltaTable, Transaction

__all__ = ["batch_committed", "commit_properties"]


def commit_properties(
    metadata: Mapping[str, str] | None, *, batch_ids: Sequence[str] = ()
) -> CommitProperties:
    """Commit properties with ``metadata`` and one app transaction (version 1) per batch id."""
    unique = list(dict.fromkeys(batch_ids))
    return CommitProperties(
        custom_metadata=dict(metadata) if metadata else None,
        app_transactions=[Transaction(app_id=app_id, version=1) for app_id in unique] or None,
    )


def batch_committed(delta: DeltaTable | None, batch_id: str) -> bool:
    """Whether a commit of ``delta`` (as far as it has been refreshed) recorded ``batch_id``."""
    return delta is not None and delta.transaction_version(batch_id) is not None
