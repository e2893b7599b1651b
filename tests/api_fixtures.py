"""Running a real uvicorn server on 127.0.0.1 in a thread, for the API tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from starlette.types import ASGIApp

from node.api.server import HttpLimits, build_server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_in_thread(app: ASGIApp) -> Iterator[str]:
    """The app under the node's own uvicorn server (same protocol and limits as `serve`);
    yields its base URL."""
    port = free_port()
    server = build_server(
        app, host="127.0.0.1", port=port, limits=HttpLimits(), log_level="warning"
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def read_events_then_hang_up(resp: httpx.Response, count: int) -> None:
    """Read `count` SSE `data:` lines of a streamed response; the caller then disconnects."""
    seen = 0
    for line in resp.iter_lines():
        seen += line.startswith("data: ")
        if seen >= count:
            return
