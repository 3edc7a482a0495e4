"""Shared setup for the Klaviyo adapter and contract tests: a real adapter on a real stand-in."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from infra.sandbox.klaviyo import KlaviyoStandIn
from tasks.connectors.destinations.klaviyo import Klaviyo, open_klaviyo
from tasks.connectors.destinations.protocol import Member
from tasks.connectors.http import RetryPolicy
from tasks.core.config import KlaviyoDestination

KEY = "pk_test_0123456789abcdef"
SECRET_ENV = "AUDIENCE_LAKE_SECRET_KLAVIYO_TEST_KEY"
LIST = "Y6nRLr"
OTHER_LIST = "Xq2Lst"


@dataclass
class RecordingSleep:
    """A retry-policy sleep that records every wait and sleeps at most ``cap`` seconds of it,
    so a test can check that ``Retry-After`` was honoured without waiting for it."""

    cap: float = 0.0
    waits: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        time.sleep(min(seconds, self.cap))


def fast_policy(sleep: RecordingSleep | None = None, *, attempts: int = 8) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=attempts,
        base=0.001,
        cap=0.01,
        deadline=30.0,
        sleep=sleep if sleep is not None else RecordingSleep(),
    )


def open_adapter(
    server: KlaviyoStandIn,
    monkeypatch: pytest.MonkeyPatch,
    *,
    policy: RetryPolicy | None = None,
    **config: object,
) -> Klaviyo:
    """The adapter exactly as the registry opens it, pointed at the stand-in."""
    monkeypatch.setenv(SECRET_ENV, KEY)
    destination = KlaviyoDestination.model_validate(
        {
            "kind": "klaviyo",
            "base_url": server.url,
            "api_key": {"secret": "klaviyo_test_key"},
            "poll_interval_seconds": 0.005,
            "poll_timeout_seconds": 10,
            "audiences": {"newsletter": LIST},
            **config,
        }
    )
    return open_klaviyo(destination, policy=policy or fast_policy())


def member(n: int, **fields: object) -> Member:
    return Member(
        contact_key=f"c{n}",
        email=f"person{n}@example.com",
        fields=fields,  # type: ignore[arg-type]
    )
