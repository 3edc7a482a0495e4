"""The project's exception hierarchy: every error names the thing that failed.

Lives at the top of ``tasks`` so core, connectors, task wrappers and flows can all raise
and catch the same classes without breaking the layer rules.
"""

from __future__ import annotations


class AudienceLakeError(Exception):
    """Base class for every error this project raises on purpose."""


class ConfigError(AudienceLakeError):
    """``pipeline.yaml`` or the environment is invalid; the message names the key path."""


class SourceError(AudienceLakeError):
    """A source could not be read, or returned data we cannot interpret."""


class DataQualityError(AudienceLakeError):
    """Data broke a contract so badly that the step must stop (rows are quarantined first)."""


class PublishError(AudienceLakeError):
    """A destination refused a request in a way a retry cannot fix."""


class SourcesFailedError(SourceError):
    """One or more sources failed while the others were read and committed.

    The message has one line per failed source (``name: error``); ``failed`` maps each failed
    source to that line, so a caller can carry on with what landed.
    """

    def __init__(self, message: str, failed: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.failed: dict[str, str] = dict(failed or {})

    def __reduce__(self) -> tuple[type[SourcesFailedError], tuple[str, dict[str, str]]]:
        return (type(self), (str(self), self.failed))  # survives Prefect's result pickling


class OrchestratorError(AudienceLakeError):
    """The Prefect API the run needs is unreachable or refused; the message names its URL."""


class LakeError(AudienceLakeError):
    """A lake operation failed. The message names the table and the lake URI."""


class StoreAccessError(LakeError):
    """The lake's store refused our credentials or permissions (HTTP 403: an unknown access key,
    a bad signature, a denied action). A retry sends the same credentials: it cannot help."""


class CorruptTableError(LakeError):
    """A Delta table's transaction log cannot be read; the message names the table and, when it
    can be found, the commit file. Retries read the same bytes: a person must repair it."""


class LakeFullError(LakeError):
    """The volume holding the lake is full (ENOSPC); the message names the table being written."""
