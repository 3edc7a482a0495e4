"""The checks behind ``audience-lake doctor``: lake, secrets, sources, destinations.

Every check is a cheap read, never a write (the lake's conditional-put check writes and deletes
one marker object under ``_doctor/``, as it always has). Each check becomes one line:
``ok``, ``warn``, ``FAIL`` or ``skipped``, a detail, and on failure a hint. Secrets are never
printed: messages pass through :func:`tasks.connectors.redact.redact`.

Adding a source kind or a destination = one probe function and one line in
:data:`SOURCE_PROBES` / :data:`DESTINATION_PROBES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tasks.connectors.destinations import PLATFORMS
from tasks.connectors.http import RetryPolicy
from tasks.connectors.redact import redact
from tasks.connectors.sources.events import landing_for
from tasks.connectors.sources.files import open_file_drop
from tasks.connectors.sources.rest import RestReader
from tasks.connectors.sources.sql import open_sql_source
from tasks.connectors.storage import CheckResult, check_store
from tasks.core.config import PipelineConfig, missing_secrets

CheckStatus = Literal["ok", "warn", "FAIL", "skipped"]

# A doctor answers in seconds: one retry at most, a short deadline.
PROBE_POLICY = RetryPolicy(max_attempts=2, base=0.2, cap=1.0, deadline=10.0, max_server_wait=2.0)


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    status: CheckStatus
    detail: str
    hint: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"

    def line(self) -> str:
        """``[ok] name: detail`` (and ``-> hint`` on a failure or warning)."""
        text = f"[{self.status}] {self.name}: {self.detail}"
        return f"{text} -> {self.hint}" if self.hint and self.status != "ok" else text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact(" ".join(text.split())[:400]) if text else type(exc).__name__


def check_lake(root: str, storage_options: Mapping[str, str]) -> list[Check]:
    """The lake store: reachable, credentials accepted, conditional PUT refused with 412."""
    hint = "check AUDIENCE_LAKE_LAKE_URI, AUDIENCE_LAKE_S3_ENDPOINT and the AWS_* credentials"
    return [
        Check(f"lake {r.name}", _status(r.ok, warn=r.warn), r.detail, _lake_hint(r, hint))
        for r in check_store(root, dict(storage_options))
    ]


def _status(ok: bool, *, warn: bool) -> CheckStatus:
    if not ok:
        return "FAIL"
    return "warn" if warn else "ok"


def _lake_hint(result: CheckResult, default: str) -> str:
    if result.ok and not result.warn:
        return ""
    return LAKE_HINTS.get(result.name, default)


LAKE_HINTS: dict[str, str] = {
    "tls": "use an https:// endpoint (AUDIENCE_LAKE_S3_CA_BUNDLE for a private CA)",
    "encryption": "set AUDIENCE_LAKE_S3_SSE (sse-s3, or sse-kms with "
    "AUDIENCE_LAKE_S3_SSE_KMS_KEY_ID) and check the store supports it",
}


def tls_summary(url: str | None, ca_bundle: str | None) -> str:
    """How the client of a source or destination protects ``url``: verified TLS or plain HTTP.

    Certificate verification cannot be turned off, so an https request that succeeded was
    verified, against ``ca_bundle`` when one is configured.
    """
    if url is None:
        return ""
    if url.lower().startswith("https://"):
        trusted = f"CA bundle {ca_bundle}" if ca_bundle else "default trust store"
        return f"TLS verified ({trusted})"
    return "plain HTTP (not encrypted)"


def _with_tls(detail: str, config: Any) -> str:
    summary = tls_summary(getattr(config, "base_url", None), getattr(config, "ca_bundle", None))
    return f"{detail}; {summary}" if summary else detail


def check_secrets(config: PipelineConfig, env: Mapping[str, str] | None = None) -> list[Check]:
    """One line per missing secret (naming the variable to export), or one ``ok`` line."""
    try:
        missing = missing_secrets(config, env)
    except Exception as exc:  # a secret source (Prefect API) failing is a FAIL line, not a crash
        hint = "check PREFECT_API_URL, or set the secrets in the worker's environment"
        return [Check("secrets", "FAIL", _first_line(exc), hint)]
    if not missing:
        return [Check("secrets", "ok", "every referenced secret is set")]
    return [
        Check(
            f"secret {m.secret}",
            "FAIL",
            f"{m.path} references it and {m.env_var} is not set",
            f"export {m.env_var} in the worker's environment, or create the Prefect Secret block "
            f"audience-lake-{m.secret.replace('_', '-')} (read when PREFECT_API_URL is set)",
        )
        for m in missing
    ]


# --- sources ---------------------------------------------------------------------------------


def _probe_rest(name: str, config: Any) -> str:
    reader = RestReader(config, source_name=name, policy=PROBE_POLICY)
    try:
        records = reader.probe()
    finally:
        reader.close()
    return f"{config.base_url}: authenticated, first page read ({records} records)"


def _probe_sql(name: str, config: Any) -> str:
    reader = open_sql_source(name, config)
    columns = reader.probe()
    return f"{reader.masked_url}: connected, table {config.table!r} has {columns} columns"


def _probe_files(name: str, config: Any) -> str:
    return open_file_drop(name, config).probe()


def _probe_events(name: str, config: Any) -> str:
    landing = landing_for(config)
    try:
        count = len(landing.list(config.pattern))
    except Exception as exc:  # any listing failure is the answer
        raise OSError(f"cannot list {landing.location}: {_first_line(exc)}") from None
    return f"landing {landing.location} lists ({count} batches waiting)"


SOURCE_PROBES: dict[str, Callable[[str, Any], str]] = {
    "rest": _probe_rest,
    "sql": _probe_sql,
    "files": _probe_files,
    "events": _probe_events,
}

SOURCE_HINTS: dict[str, str] = {
    "rest": "check base_url, the client id/secret or API key, and that the API answers",
    "sql": "check the database URL, its password secret, and that the table exists",
    "files": "check that the drop folder or s3:// prefix exists and can be listed",
    "events": "check the landing folder or s3:// prefix (the receiver creates a local one)",
}


def check_sources(config: PipelineConfig) -> list[Check]:
    """One line per enabled source: reachable and authenticated by one cheap read."""
    checks = []
    for name, source in config.sources.items():
        if not source.enabled:
            checks.append(Check(f"source {name}", "skipped", "disabled"))
            continue
        try:
            detail = SOURCE_PROBES[source.kind](name, source)
        except Exception as exc:  # every failure becomes a FAIL line, not a crash
            checks.append(
                Check(f"source {name}", "FAIL", _first_line(exc), SOURCE_HINTS[source.kind])
            )
        else:
            checks.append(Check(f"source {name}", "ok", _with_tls(detail, source)))
    return checks


# --- destinations ----------------------------------------------------------------------------


def check_destinations(config: PipelineConfig) -> list[Check]:
    """One line per destination: reachable, key accepted, every configured list readable."""
    checks = []
    for name, destination in config.destinations.items():
        try:
            sink = PLATFORMS[destination.kind](destination)
            try:
                probe = getattr(sink, "probe")  # noqa: B009 (every adapter takes the policy)
                detail = probe(destination.list_ids(), policy=PROBE_POLICY)
            finally:
                sink.close()
        except Exception as exc:  # every failure becomes a FAIL line, not a crash
            hint = "check base_url, the API key secret and the list ids under audiences"
            checks.append(Check(f"destination {name}", "FAIL", _first_line(exc), hint))
        else:
            checks.append(Check(f"destination {name}", "ok", _with_tls(detail, destination)))
    return checks
