"""Which task failures deserve a Prefect retry.

HTTP calls already retry transient failures inside the client (with backoff and Retry-After),
so a task-level retry is for what the client cannot see: a lake commit that lost a race, a
storage hiccup. Errors that a retry cannot fix (bad config, garbage from a source, a contract
broken by the data, a destination or the lake's store refusing credentials, a corrupt Delta log, a
full disk) fail fast so the run says why at once.
"""

from __future__ import annotations

from typing import Any

from tasks.errors import (
    ConfigError,
    CorruptTableError,
    DataQualityError,
    LakeFullError,
    PublishError,
    SourceError,
    StoreAccessError,
)

PERMANENT: tuple[type[Exception], ...] = (
    ConfigError,
    DataQualityError,
    SourceError,
    PublishError,
    StoreAccessError,
    CorruptTableError,
    LakeFullError,
)


def retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry unless the failure is a permanent error."""
    del task, task_run
    try:
        state.result()
    except PERMANENT:
        return False
    except Exception:
        return True
    return True
