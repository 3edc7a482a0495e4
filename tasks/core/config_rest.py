"""``kind: rest``: a declarative REST source, so adding an API is YAML, not code.

A REST source says where the records are (``base_url``, ``path``, ``method``, ``params``,
``body``), where in the reply they sit (``records_path``), how to turn the next page
(``paginator``), how to sign in (``auth``), how to pull only what changed (``incremental``) and how
fast it may go (``budget``, ``retry``). ``{since}`` in any parameter, body value or path is replaced
by the incremental watermark (minus the overlap) in the configured format.

Presets (``preset: hubspot_contacts`` ...) expand into a full REST config from a few options;
keys the user writes next to the preset override the expansion (mappings are merged, everything
else is replaced). See :mod:`tasks.core.config_rest_presets`.

It builds on ``SourceBase`` and ``SecretRef`` (:mod:`tasks.core.config_base`), the ``auth``
models (:mod:`tasks.core.config_rest_auth`) and the paginators
(:mod:`tasks.core.config_rest_paging`); :mod:`tasks.core.config` puts :class:`RestSource` in the
``Source`` union.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from tasks.core.config_base import Model, SourceBase
from tasks.core.config_rest_auth import RestAuth, RestOAuth2Common
from tasks.core.config_rest_paging import Location, Paginator, SearchKeysetPaginator, SinglePage
from tasks.core.config_rest_presets import PRESETS, SINCE, PresetName, deep_merge
from tasks.core.transport import TransportOptions

# --- incremental, budget, retries, records --------------------------------------------------


CursorOrder = Literal["ascending", "descending", "unordered"]


class Incremental(Model):
    """Pull only what changed since the watermark (max cursor committed in bronze)."""

    cursor_field: str = Field(description="Record column holding the change time.")
    param: str | None = Field(
        default=None, description="Parameter set to the since value (or use {since} anywhere)."
    )
    location: Location = "query"
    format: Literal["iso", "epoch_ms", "epoch_s"] = Field(
        default="iso", description="How {since} is written into the request."
    )
    overlap_seconds: float = Field(
        default=0, ge=0, description="Re-read window before the watermark; the merge absorbs it."
    )
    start: str = Field(
        default="1970-01-01T00:00:00Z",
        description="Since value of the first run (ISO time or epoch seconds/milliseconds).",
    )
    order: CursorOrder = Field(
        default="ascending",
        description="Order of the listing by cursor across pages. Only an ascending listing is "
        "committed batch by batch. A descending (Stripe) or unordered listing (an endpoint that "
        "takes no sort parameter) is held until the pull is complete and then committed in "
        "ascending cursor order, so a run stopped part-way can never advance the watermark "
        "(the max cursor in bronze) past a record it has not read.",
    )


class Budget(Model):
    """Proactive client-side pacing, to stay under the documented limit."""

    requests_per_second: float | None = Field(default=None, gt=0)
    max_concurrency: int = Field(default=1, ge=1, le=64)


class Retry(Model):
    """Backoff for transient failures (defaults: docs/platforms.md, *Retries*)."""

    max_attempts: int = Field(default=6, ge=1, le=20)
    base_seconds: float = Field(default=0.5, ge=0)
    cap_seconds: float = Field(default=30, ge=0)
    deadline_seconds: float = Field(default=120, gt=0)
    max_server_wait_seconds: float = Field(
        default=300, ge=0, description="A longer Retry-After parks the run instead of sleeping."
    )


class Flatten(Model):
    """How a JSON record becomes one row of string columns."""

    lift: list[str] = Field(
        default_factory=list,
        description="Dotted paths of nested objects whose keys become columns (HubSpot "
        "'properties'); a top-level key of the same name wins.",
    )
    exclude: list[str] = Field(
        default_factory=list, description="Top-level keys to leave out (Salesforce 'attributes')."
    )


class RestSource(SourceBase, TransportOptions):
    """A REST API read page by page into ``bronze/<source>`` (all columns as strings)."""

    kind: Literal["rest"]
    preset: PresetName | None = Field(default=None, description="Expand a known API's config.")
    options: dict[str, Any] = Field(default_factory=dict, description="The preset's options.")
    base_url: str
    path: str = Field(default="", description="Endpoint path relative to base_url.")
    method: Literal["GET", "POST"] = "GET"
    params: dict[str, str | int | float | bool | list[str]] = Field(default_factory=dict)
    body: dict[str, Any] | None = Field(default=None, description="JSON body template (POST).")
    headers: dict[str, str] = Field(default_factory=dict)
    auth: RestAuth | None = None
    records_path: str = Field(
        default="", description="Dotted path of the record list in the reply ('' = the reply)."
    )
    primary_key: str = "id"
    columns: list[str] | None = Field(
        default=None, description="Columns to keep, in order; default: every key seen."
    )
    flatten: Flatten = Field(default_factory=Flatten)
    paginator: Paginator = Field(default_factory=lambda: SinglePage(type="single"))
    incremental: Incremental | None = None
    budget: Budget = Field(default_factory=Budget)
    retry: Retry = Field(default_factory=Retry)
    idempotent: bool | None = Field(
        default=None,
        description="May a request be resent after a read timeout? Default: GET yes, POST no "
        "(set true for read-only POSTs such as a search).",
    )
    rows_per_batch: int = Field(default=5_000, ge=1)
    timeout_seconds: float = Field(default=30, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("preset") is None:
            return data
        name = data["preset"]
        preset = PRESETS.get(name)
        if preset is None:
            raise ValueError(f"preset: unknown preset {name!r}; known: {sorted(PRESETS)}")
        try:
            options = preset.options.model_validate(data.get("options") or {})
        except ValidationError as exc:
            problems = "; ".join(
                f"options.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"preset {name!r}: {problems}") from exc
        return deep_merge(preset.expand(options, data), data)

    @model_validator(mode="after")
    def _since_is_used(self) -> RestSource:
        templated = SINCE in repr((self.path, self.params, self.body))
        if self.incremental is None and templated:
            raise ValueError("{since} is used but 'incremental' is not configured")
        if self.incremental is not None and self.incremental.param is None and not templated:
            raise ValueError(
                "incremental: set 'param' or put {since} in path, params or body, "
                "otherwise every run re-reads everything"
            )
        if isinstance(self.paginator, SearchKeysetPaginator) and (
            self.method != "POST" or self.body is None
        ):
            raise ValueError("paginator search_keyset: needs method POST and a search 'body'")
        if self.columns is not None and self.primary_key not in self.columns:
            raise ValueError(f"columns must include the primary key {self.primary_key!r}")
        return self

    @property
    def cursor_field(self) -> str | None:
        return None if self.incremental is None else self.incremental.cursor_field

    def credential_urls(self) -> Iterator[tuple[str, str]]:
        yield "base_url", self.base_url
        if isinstance(self.auth, RestOAuth2Common) and "://" in self.auth.token_url:
            yield "auth.token_url", self.auth.token_url


# Tags of the discriminated unions of a REST source (here, in config_rest_auth and in
# config_rest_paging), dropped from error paths by tasks.core.config.
UNION_TAGS: frozenset[str] = frozenset(
    {
        "rest",
        "bearer",
        "api_key",
        "basic",
        "oauth2_client_credentials",
        "oauth2_refresh_token",
        "single",
        "json_cursor",
        "search_keyset",
        "next_url",
        "link_header",
        "offset",
        "page_number",
        "starting_after",
    }
)
