"""``dsmd serve``: a search page and a JSON API over one index, on the standard library's server.

- ``GET /`` the page: a search box, a grid of thumbnails with scores, the query's latency;
- ``GET /api/search?q=CAPTION&k=10`` the ``dsmd search --json`` fields, ``{"query", "results",
  "ms"}`` (an empty or missing ``q`` is a 400 with ``{"error": ...}``);
- ``GET /api/info`` what the index holds and which model answers;
- ``GET /thumb/ID`` a JPEG thumbnail of item ``ID``: only indexed files are ever read.
"""

from __future__ import annotations

import errno
import io
import json
import threading
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from dsmd.data.images import load_image
from dsmd.errors import DsmdError
from dsmd.inference import Encoder
from dsmd.search.index import Index
from dsmd.search.query import run_query

PAGE = (Path(__file__).parent / "page.html").read_bytes()
THUMB_SIDE = 256
THUMB_CACHE = 512
MAX_K = 100


class SearchService:
    """The index, the query encoder and a thumbnail cache, shared by the request threads."""

    def __init__(self, index: Index, encoder: Encoder):
        self.index, self.encoder = index, encoder
        self._lock = threading.Lock()  # one query at a time through the model
        self._thumbs: OrderedDict[int, bytes] = OrderedDict()

    def search(self, text: str, k: int) -> dict:
        with self._lock:
            return run_query(self.index, self.encoder, text=text, k=max(1, min(k, MAX_K)))

    def info(self) -> dict:
        return {
            "index": str(self.index.path),
            "kind": self.index.kind,
            "count": len(self.index),
            "model": self.encoder.name,
        }

    def thumbnail(self, item: int) -> bytes:
        """JPEG bytes of indexed image ``item`` (IndexError: no such item, or not an image index)."""
        if self.index.kind != "images" or not 0 <= item < len(self.index):
            raise IndexError(item)
        with self._lock:
            if item in self._thumbs:
                self._thumbs.move_to_end(item)
                return self._thumbs[item]
        img = load_image(self.index.label(item))
        img.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        with self._lock:
            self._thumbs[item] = buf.getvalue()
            while len(self._thumbs) > THUMB_CACHE:
                self._thumbs.popitem(last=False)
        return buf.getvalue()


def handler_for(service: SearchService, quiet: bool = True) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "dsmd"

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
            if not quiet:
                super().log_message(format, *args)

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: HTTPStatus, obj: dict) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            url = urlparse(self.path)
            if url.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, PAGE, "text/html; charset=utf-8")
            elif url.path == "/api/search":
                self._search(parse_qs(url.query))
            elif url.path == "/api/info":
                self._json(HTTPStatus.OK, service.info())
            elif url.path.startswith("/thumb/"):
                self._thumb(url.path.removeprefix("/thumb/"))
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {url.path}"})

        def _search(self, params: dict) -> None:
            text = (params.get("q") or [""])[0]
            try:
                k = int((params.get("k") or ["10"])[0])
                self._json(HTTPStatus.OK, service.search(text, k))
            except (DsmdError, ValueError) as exc:
                self._json(HTTPStatus.BAD_REQUEST, {"error": " ".join(str(exc).split())})

        def _thumb(self, item: str) -> None:
            try:
                self._send(HTTPStatus.OK, service.thumbnail(int(item)), "image/jpeg")
            except (IndexError, ValueError):
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no indexed image {item}"})
            except (DsmdError, OSError) as exc:
                self._json(HTTPStatus.NOT_FOUND, {"error": " ".join(str(exc).split())})

    return Handler


def make_server(
    service: SearchService, host: str = "127.0.0.1", port: int = 8000, quiet: bool = True
) -> ThreadingHTTPServer:
    """A server bound to ``host:port`` (port 0: any free one), not yet serving.

    Raises:
        DsmdError: the port is in use, or the address cannot be bound.
    """
    try:
        server = ThreadingHTTPServer((host, port), handler_for(service, quiet))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise DsmdError(
                f"port {port} on {host} is in use. Choose another with --port, or stop what listens there."
            ) from exc
        raise DsmdError(f"cannot listen on {host}:{port} ({exc.strerror or exc}). Check --host and --port.") from exc
    server.daemon_threads = True
    return server
