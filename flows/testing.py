"""Test support: one private Prefect server per test session, shared by every module that needs one.

Starting a server costs 5-15 s here, so flow, Dask and CLI tests share one: the first caller starts it
(:func:`flows.server.local_server`, which dies with the test process even on SIGKILL) and exports
``PREFECT_API_URL`` so that subprocesses (``adv2 run``) and Dask workers use it too.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from pathlib import Path

_LOCK = threading.Lock()
_STACK: contextlib.ExitStack | None = None
_URL: str | None = None


def shared_prefect_server(prefect_home: str | Path) -> str:
    """Start (once) a private server and export PREFECT_API_URL; returns the URL."""
    global _STACK, _URL
    with _LOCK:
        if _URL is None:
            from flows.server import local_server

            stack = contextlib.ExitStack()
            _URL = stack.enter_context(local_server(prefect_home))
            _STACK = stack
            atexit.register(stop_shared_prefect_server)
        os.environ["PREFECT_API_URL"] = _URL
        return _URL


def stop_shared_prefect_server() -> None:
    global _STACK, _URL
    with _LOCK:
        if _STACK is not None:
            _STACK.close()
        _STACK, _URL = None, None
        os.environ.pop("PREFECT_API_URL", None)
