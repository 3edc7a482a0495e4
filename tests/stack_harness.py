"""Run real services as separate processes for end-to-end tests: start, wait (bounded), stop.

Shared by the tests that start a ``prefect server``, a worker from ``prefect.yaml`` and the
sandbox services natively (``tests/stack/``): every wait has a deadline and names what it waited
for; every process leads its own session so stopping it also ends the flow-run processes it
spawned; a Prefect worker needs two SIGTERMs to stop promptly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
"""The virtualenv's scripts (``prefect``, ``audience-lake``, ``moto_server``)."""


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``.

    HTTP and OS errors count as "not yet" (a server still starting refuses connections).
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a compose env file (comments and blank lines skipped)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        env[key.strip()] = value.strip()
    return env


def clean_environment(**overrides: str) -> dict[str, str]:
    """This process's environment without any ``PREFECT_*`` / ``AUDIENCE_LAKE_*``, plus overrides.

    The virtualenv's scripts come first on PATH, as they do in the stack's image.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "AUDIENCE_LAKE_"))
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.update(overrides)
    return env


@dataclass
class Processes:
    """Processes started for one test, each logging to ``logs/<name>.log``."""

    logs: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    sigterms: dict[str, int] = field(default_factory=dict)

    def start(
        self, name: str, args: list[str], env: Mapping[str, str], *, sigterms: int = 1
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` in the repository root as ``name`` (a worker wants ``sigterms=2``)."""
        assert name not in self.running or self.running[name].poll() is not None, name
        with (self.logs / f"{name}.log").open("ab") as sink:
            proc = subprocess.Popen(
                args,
                env=dict(env),
                cwd=ROOT,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.running[name] = proc
        self.sigterms[name] = sigterms
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def alive(self, name: str) -> bool:
        return self.running[name].poll() is None

    def stop(self, name: str) -> None:
        """SIGTERM (as often as the process needs), then SIGKILL its whole session."""
        proc = self.running[name]
        for _ in range(self.sigterms[name]):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        # Each process leads its own session: this also ends children it left behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def stop_all(self) -> None:
        for name in reversed(list(self.running)):
            self.stop(name)

    def dump_logs(self, tail: int = 3000) -> None:
        """Print the end of every log (pytest shows it for a failed test)."""
        for path in sorted(self.logs.glob("*.log")):
            print(f"--- {path.name} ---\n{path.read_text(errors='replace')[-tail:]}")


@contextlib.contextmanager
def processes(logs: Path) -> Iterator[Processes]:
    """A :class:`Processes` whose members are all stopped (and logs printed) on exit."""
    logs.mkdir(parents=True, exist_ok=True)
    group = Processes(logs)
    try:
        yield group
    finally:
        group.stop_all()
        group.dump_logs()


def start_prefect_server(
    group: Processes, env: Mapping[str, str], port: int, *, timeout: float = 120
) -> httpx.Client:
    """``prefect server start`` on 127.0.0.1:``port``; returns a client of its API once healthy."""
    group.start(
        "prefect-server",
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
    )
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api", timeout=15)
    wait_for_prefect_server(group, api, timeout)
    return api


def wait_for_prefect_server(group: Processes, api: httpx.Client, timeout: float) -> None:
    """Wait until the ``prefect-server`` process of ``group`` answers ``/health``."""

    def healthy() -> bool:
        if not group.alive("prefect-server"):
            raise AssertionError("prefect server exited:\n" + group.log("prefect-server")[-3000:])
        return api.get("/health").status_code == 200

    wait_for("prefect server health", healthy, timeout)


TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})


def wait_for_flow_run(api: httpx.Client, flow_run_id: str, timeout: float) -> dict[str, Any]:
    """The flow run once it reached a terminal state (bounded by ``timeout``)."""

    def terminal() -> dict[str, Any] | None:
        response = api.get(f"/flow_runs/{flow_run_id}")
        response.raise_for_status()
        run: dict[str, Any] = response.json()
        return run if run["state_type"] in TERMINAL_STATES else None

    result: dict[str, Any] = wait_for(f"flow run {flow_run_id} finished", terminal, timeout, 1.0)
    return result
