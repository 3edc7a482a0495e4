"""A Prefect test server on PostgreSQL: :func:`prefect.testing.utilities.prefect_test_harness`
with the database it is given instead of a temporary SQLite file.

It does what the harness does (Prefect 3.9): a fresh database interface, the server as a
subprocess on a free port registered as the default ephemeral server, the API URL in the
settings (also process-wide, for contexts copied before it started), and on exit the log and
event workers drained before the server stops. The database is created for the session and
dropped afterwards, so each pytest-xdist worker has its own.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from urllib.parse import urlsplit, urlunsplit

import prefect.context
import psycopg
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.server.api.server import SubprocessASGIServer
from prefect.server.database.dependencies import temporary_database_interface
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_DATABASE_CONNECTION_URL,
    temporary_settings,
)
from prefect.utilities.asyncutils import run_coro_as_sync

from tests.conftest import free_port


@contextmanager
def postgres_test_server(admin_url: str, *, startup_timeout: float = 60) -> Iterator[None]:
    """Run the flows of the ``with`` block against a Prefect server on a new database of the
    PostgreSQL server at ``admin_url`` (a ``postgresql://`` URL with rights to create one)."""
    name = f"prefect_tests_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin_url)
    database_url = urlunsplit(("postgresql+asyncpg", parts.netloc, f"/{name}", "", ""))
    try:
        with ExitStack() as stack:
            stack.enter_context(temporary_database_interface())
            stack.enter_context(
                temporary_settings({PREFECT_SERVER_DATABASE_CONNECTION_URL: database_url})
            )
            server = SubprocessASGIServer(port=free_port())
            prior = SubprocessASGIServer._instances.get(None)
            SubprocessASGIServer._instances[None] = server
            try:
                server.start(timeout=int(startup_timeout))
                stack.enter_context(temporary_settings({PREFECT_API_URL: server.api_url}))
                stack.enter_context(
                    prefect.context._temporary_global_settings_context(
                        prefect.context.get_settings_context()
                    )
                )
                yield
                run_coro_as_sync(_drain_workers())
            finally:
                server.stop()
                if prior is not None:
                    SubprocessASGIServer._instances[None] = prior
                else:
                    SubprocessASGIServer._instances.pop(None, None)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _drain_workers() -> None:
    """Send what the log and event workers still hold before the server goes away."""
    try:
        result = APILogWorker.instance().drain()
        if inspect.isawaitable(result):
            await result
    except RuntimeError:  # never started
        pass
    drained = EventsWorker.drain_all()
    if inspect.isawaitable(drained):
        await drained
