"""Helpers of the ``dsmd serve`` tests: a server in a thread, GET requests, raw sockets, waits.

Every wait has a deadline that only a failure reaches: no test depends on the machine's speed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

from dsmd.search.server import SearchService, ServeLimits, make_server

PATIENCE_S = 120.0


@contextlib.contextmanager
def running(service: SearchService, limits: ServeLimits | None = None) -> Iterator[dict]:
    """A server over ``service`` on a free port, serving in a daemon thread until the block ends."""
    server = make_server(service, "127.0.0.1", 0, limits=limits)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address
    try:
        yield {"url": f"http://{host}:{port}", "port": port, "server": server}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(PATIENCE_S)


def get(url: str) -> tuple[int, bytes, str]:
    """``(status, body, content type)`` of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=PATIENCE_S) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers["Content-Type"]


def get_json(url: str) -> tuple[int, dict]:
    status, body, kind = get(url)
    assert kind == "application/json", (status, kind, body[:200])
    return status, json.loads(body)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail after :data:`PATIENCE_S`."""
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def open_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections to the server that never send a byte."""
    return [socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) for _ in range(count)]


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends on ``sock`` until it closes it."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)
