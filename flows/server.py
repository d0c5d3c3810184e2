"""Which Prefect API a run talks to, and a local one that cannot outlive its process.

* ``PREFECT_API_URL`` set: use that server (a team server, or ``prefect server start`` in a shell).
* Not set, local run: start a private server child (the same uvicorn app Prefect's "ephemeral mode"
  starts) on a free port, with its database under ``PREFECT_HOME`` (default ``<data root>/prefect-home``,
  so nothing lands in ``~/.prefect`` unless the user chose it). Unlike Prefect's own ephemeral server,
  the child gets ``PR_SET_PDEATHSIG`` on Linux: if the run is SIGKILLed, the server dies with it
  (Prefect's ephemeral server was measured to survive as an orphan).
* Not set, distributed run: refuse with a one-line error. Every Dask worker without the variable
  would start its *own* temporary server (stack-notes section 2), so a real server is required.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from adv2core.errors import ConfigError

SERVER_HINT = (
    "start one with `prefect server start` (another shell, or --background) and "
    "`export PREFECT_API_URL=http://127.0.0.1:4200/api` here and on every Dask worker"
)


class PrefectServerError(ConfigError):
    """The Prefect API needed by a run is missing or did not start."""


def api_url() -> str | None:
    """The configured Prefect API URL (environment or Prefect settings/profile), if any."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    try:
        from prefect.settings import PREFECT_API_URL

        return PREFECT_API_URL.value() or None
    except Exception:  # pragma: no cover - settings unreadable
        return None


def default_prefect_home(data_root: str | Path) -> Path:
    """``$PREFECT_HOME`` if the user set one, else ``<data root>/prefect-home``."""
    env = os.environ.get("PREFECT_HOME")
    return Path(env).expanduser() if env else Path(data_root) / "prefect-home"


def require_server_for_dask() -> str:
    url = api_url()
    if not url:
        raise PrefectServerError(f"a distributed run needs a Prefect server and PREFECT_API_URL is not set: {SERVER_HINT}")
    return url


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def drain_prefect_workers(timeout: float = 10.0) -> None:
    """Send queued logs and events before the server goes away (else they retry for minutes at exit)."""
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker
    except ImportError:  # pragma: no cover
        return
    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout)
        except Exception:  # a worker that never started, or is already stopped
            pass


@contextlib.contextmanager
def local_server(prefect_home: str | Path, *, timeout: float = 90.0) -> Iterator[str]:
    """Run a private Prefect API server for the duration of the block; yields its API URL."""
    import httpx
    import prefect

    home = Path(prefect_home)
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "ab")
    cmd = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent),
        "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "error", "--lifespan", "on",
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        t0 = time.monotonic()
        with httpx.Client() as client:
            while True:
                if proc.poll() is not None:
                    raise PrefectServerError(f"the local Prefect server exited with code {proc.returncode} "
                                             f"(see {home / 'server.log'}); {SERVER_HINT}")
                try:
                    if client.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() - t0 > timeout:
                    raise PrefectServerError(f"the local Prefect server did not answer within {timeout:.0f} s "
                                             f"(see {home / 'server.log'}); {SERVER_HINT}")
                time.sleep(0.2)
        yield url
    finally:
        drain_prefect_workers()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def prefect_api(prefect_home: str | Path, *, distributed: bool, heartbeats: bool | None) -> Iterator[dict]:
    """Make a Prefect API available for the block; yields ``{"api_url", "mode"}``.

    ``heartbeats=None`` turns flow heartbeats off on the private server only: nothing watches a
    server that lives exactly as long as the run, and the sync engine pays ~1 s per flow run for them.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    url = api_url()
    if url:
        # Prefect reads its settings at import; the variable may have been exported since (tests, notebooks).
        updates: dict = {PREFECT_API_URL: url}
        if heartbeats is False:
            updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
        with temporary_settings(updates=updates):
            yield {"api_url": url, "mode": "server"}
        return
    if distributed:
        require_server_for_dask()
    with local_server(prefect_home) as local:
        updates = {PREFECT_API_URL: local}
        if not heartbeats:
            updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
        with temporary_settings(updates=updates):
            yield {"api_url": local, "mode": "private"}
