"""``dsmd serve``: the search app (:mod:`dsmd.search.app`) on uvicorn, bounded and stoppable.

One event loop (uvicorn's, on the ``asyncio`` loop and the ``h11`` parser) holds every
connection, so idle or slow clients cost a socket and a small object each, never a thread.
On top of uvicorn's own keep-alive timeout:

- at most :attr:`ServeLimits.max_connections` connections are open at once; one beyond them
  gets a 503 and is closed (so the process never runs out of file descriptors: the soft limit
  is raised to fit when the hard one allows);
- a connection must send a whole request head within :attr:`ServeLimits.head_timeout_s` of
  opening or of its last answer, else it is closed (idle sockets, clients that trickle bytes);
- a request head (request line and headers) over :attr:`ServeLimits.max_head_bytes` gets a 431
  and the connection is closed, whether it came in one piece or many (h11's own limit holds
  only for a head still incomplete when a piece ends);
- a request that breaks HTTP (a bad chunked body, two lengths) gets a 400 and one log line,
  also when its head had already started the app (whose answer is then dropped);
- SIGTERM or Ctrl-C stops taking connections, lets the requests in flight finish (for at most
  :attr:`ServeLimits.drain_s`; a second Ctrl-C stops waiting) and returns; ``dsmd serve`` then
  prints one line and exits 0.

The socket is bound before serving, so a port in use is a :class:`~dsmd.errors.DsmdError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import resource
import signal
import socket
import sys
import threading
from collections.abc import Callable, Generator
from types import FrameType

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from dsmd.errors import DsmdError
from dsmd.search.app import ServeLimits, create_app
from dsmd.search.service import SearchService

__all__ = ["SearchServer", "SearchService", "ServeLimits", "make_server", "serve"]

FD_HEADROOM = 256  # descriptors beyond the connections: the index, images read for thumbnails, the model's files
BACKLOG = 2048


def _refusal(status: str, message: str, headers: str = "") -> bytes:
    """A whole HTTP/1.1 answer that closes the connection: ``status`` and ``{"error": message}``."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{headers}Connection: close\r\n\r\n"
    )
    return head.encode() + body


def _busy_response(limits: ServeLimits) -> bytes:
    message = f"the server holds {limits.max_connections} connections, its limit. Try again shortly."
    return _refusal("503 Service Unavailable", message, "Retry-After: 1\r\n")


def _too_large_response(limits: ServeLimits) -> bytes:
    message = f"the request head is over {limits.max_head_bytes} bytes, the server's limit."
    return _refusal("431 Request Header Fields Too Large", message)


def protocol_class(limits: ServeLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a connection cap, a deadline and a size limit for each request head."""
    busy, too_large = _busy_response(limits), _too_large_response(limits)

    class BoundedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0  # of the request head being received, before the last piece
        _head_tail = b""  # the last 3 bytes received of it (a blank line may straddle two pieces)

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE and self._head_too_large(data):
                self.logger.warning(
                    "a request head over %d bytes from %s: refused (431)", limits.max_head_bytes, self.client
                )
                self.transport.write(too_large)
                self.transport.close()
                return
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            # A request whose body breaks the protocol after its head started the app: the app's
            # answer is dropped (the cycle counts as disconnected) instead of raising in h11.
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
                if cycle.response_started:  # part of the app's answer is out: no 400 can follow it
                    self.transport.close()
                    return
            super().send_400_response(msg)

        def _head_too_large(self, data: bytes) -> bool:
            """Count ``data`` into the head being received; whether the head is over the limit."""
            seen = self._head_tail + data
            end = seen.find(b"\r\n\r\n")
            if end < 0:
                self._head_bytes += len(data)
                self._head_tail = seen[-3:]
                return self._head_bytes > limits.max_head_bytes
            size = self._head_bytes + end + 4 - len(self._head_tail)
            self._head_bytes, self._head_tail = 0, b""
            return size > limits.max_head_bytes

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                transport.write(busy)
                transport.close()
                return
            self._arm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(limits.head_timeout_s, self._head_timeout, self.cycle)

        def _head_timeout(self, cycle_when_armed: object) -> None:
            # No new request since the timer was armed, and none in progress: idle or too slow.
            idle = self.cycle is cycle_when_armed and (self.cycle is None or self.cycle.response_complete)
            if idle and not self.transport.is_closing():
                self.transport.close()

    return BoundedH11Protocol


class _Server(uvicorn.Server):
    """uvicorn's server, whose signal handlers drain and return instead of re-raising the signal."""

    stopped_by: str | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = True  # a second signal: stop waiting for requests in flight
        self.should_exit = True
        self.stopped_by = self.stopped_by or signal.Signals(sig).name


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record comes (test runners swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging(quiet: bool) -> None:
    """Warnings and errors on stderr, prefixed; one line per request unless ``quiet``."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("dsmd serve: %(message)s"))
    for name, level, on in (("uvicorn.error", logging.WARNING, True), ("uvicorn.access", logging.INFO, not quiet)):
        logger = logging.getLogger(name)
        logger.handlers, logger.disabled = ([handler] if on else []), not on
        logger.setLevel(level)
        logger.propagate = False


def _raise_descriptor_limit(max_connections: int) -> None:
    """Raise the soft limit on open files to fit ``max_connections`` (as far as the hard one allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one).

    Raises:
        DsmdError: the port is in use, or the address cannot be bound.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise DsmdError(f"cannot listen on {host}:{port} ({exc.strerror or exc}). Check --host and --port.") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise DsmdError(
                f"port {port} on {host} is in use. Choose another with --port, or stop what listens there."
            ) from exc
        raise DsmdError(f"cannot listen on {host}:{port} ({exc.strerror or exc}). Check --host and --port.") from exc
    return sock


class SearchServer:
    """The app served by uvicorn on a socket bound at construction (see :func:`make_server`)."""

    def __init__(self, service: SearchService, sock: socket.socket, limits: ServeLimits, quiet: bool):
        self.socket, self.limits = sock, limits
        self.server_address: tuple[str, int] = sock.getsockname()[:2]
        self.app = create_app(service, limits)
        _configure_logging(quiet)
        config = uvicorn.Config(
            self.app,
            http=protocol_class(limits),
            loop="asyncio",
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=not quiet,
            proxy_headers=False,
            server_header=False,
            headers=[("server", "dsmd")],
            timeout_keep_alive=limits.keep_alive_s,
            timeout_graceful_shutdown=limits.drain_s,
            h11_max_incomplete_event_size=limits.max_head_bytes,
            backlog=BACKLOG,
        )
        self._server = _Server(config)
        self._running = threading.Event()
        self._done = threading.Event()

    @property
    def open_connections(self) -> int:
        """Connections open now (idle ones included)."""
        return len(self._server.server_state.connections)

    @property
    def requests(self) -> int:
        """Requests answered so far."""
        return self._server.server_state.total_requests

    def serve_forever(self) -> str | None:
        """Serve in this thread until :meth:`shutdown`, SIGTERM or Ctrl-C (signals: main thread only).

        Returns:
            The signal's name (``SIGTERM``, ``SIGINT``), or None when stopped by :meth:`shutdown`.
        """
        self._running.set()
        try:
            self._server.run(sockets=[self.socket])
        finally:
            for pool in self.app.state.pools:
                pool.close()
            self._done.set()
        return self._server.stopped_by

    def shutdown(self) -> None:
        """Stop as SIGTERM does and wait until :meth:`serve_forever` has returned."""
        self._server.should_exit = True
        if self._running.is_set():
            self._done.wait()

    def server_close(self) -> None:
        """Close the listening socket (serving closes it too)."""
        self.socket.close()


def make_server(
    service: SearchService,
    host: str = "127.0.0.1",
    port: int = 8000,
    quiet: bool = True,
    limits: ServeLimits | None = None,
) -> SearchServer:
    """A server bound to ``host:port`` (port 0: any free one), not yet serving.

    Raises:
        DsmdError: the port is in use, or the address cannot be bound.
    """
    limits = limits or ServeLimits()
    _raise_descriptor_limit(limits.max_connections)
    return SearchServer(service, _bind(host, port), limits, quiet)


def serve(
    service: SearchService,
    host: str = "127.0.0.1",
    port: int = 8000,
    quiet: bool = False,
    limits: ServeLimits | None = None,
    log: Callable[[str], None] = print,
    model_threads: int | None = 1,
) -> str | None:
    """``dsmd serve``: serve until SIGTERM or Ctrl-C, with a line when it starts and one when it stops.

    Args:
        model_threads: torch's CPU threads in this process (None: leave them). One by default:
            a single caption gains little from more, and threads that spin-wait for each other
            cost a query ten times its time when other work shares the cores (measured here).

    Returns:
        The name of the signal that stopped it.
    """
    if model_threads is not None:
        import torch

        torch.set_num_threads(model_threads)
    server = make_server(service, host, port, quiet, limits)
    host, port = server.server_address
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    index = service.index
    log(
        f"serving {index.path} ({len(index)} {index.kind}; {index.describe_search()}) on {url}  (Ctrl-C or SIGTERM stops)"
    )
    stopped_by = server.serve_forever()
    log(f"dsmd serve: stopped by {stopped_by or 'request'} after answering {server.requests} requests")
    return stopped_by
