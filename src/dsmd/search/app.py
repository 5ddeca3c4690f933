"""``dsmd serve``'s ASGI app (FastAPI): the search page, a JSON API, thumbnails of indexed files.

- ``GET /`` the page: a search box, a grid of thumbnails with scores, the query's latency;
- ``GET /api/search?q=CAPTION&k=10`` the ``dsmd search --json`` fields, ``{"query", "results",
  "ms"}``; ``q`` of 1 to :attr:`ServeLimits.max_query_chars` characters, ``k`` a whole number
  from 1 to :attr:`ServeLimits.max_k` (an index with fewer items returns them all);
- ``GET /api/info`` what the index holds, which model answers and which faiss index
  (``index_kind``: flat, hnsw or ivfpq, with its ``recall_at_10`` measured when built);
- ``GET /thumb/ID`` a JPEG thumbnail of item ``ID``: only indexed files are ever read;
- ``GET /openapi.json`` the API's OpenAPI schema, ``GET /docs`` its Swagger page (whose
  script and style come from a CDN: it needs a browser with internet access).

Every error is JSON, ``{"error": "one line that names the limit or the fix"}``: 400 for a
query out of bounds, 404 for anything not indexed or no such page, 503 (with ``Retry-After``)
when too much work already waits, 500 for a bug (the details go to the server's log only).

Threads: the event loop answers every connection; the model runs in one worker thread (one
query at a time: torch already spreads one query over the CPU cores) and thumbnails are made
in :attr:`ServeLimits.thumbnail_threads` others. Work waiting for them is capped, so threads
and memory stay bounded however many clients there are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

import dsmd
from dsmd.errors import DsmdError
from dsmd.search.service import SearchService

PAGE = (Path(__file__).parent / "page.html").read_bytes()
NO_STORE = {"Cache-Control": "no-store"}
T = TypeVar("T")


@dataclass(frozen=True)
class ServeLimits:
    """What one ``dsmd serve`` accepts, and for how long it waits.

    Attributes:
        max_query_chars: longest caption ``q``, in characters.
        max_k: most results one query asks for.
        max_connections: open connections at once; a connection beyond them is answered 503
            and closed at once (file descriptors and memory stay bounded).
        max_waiting_queries: queries waiting for the model beyond the one it runs; more are 503.
        thumbnail_threads: threads that decode images into thumbnails.
        max_waiting_thumbnails: thumbnails waiting for those threads; more are 503.
        head_timeout_s: seconds a connection has to send a whole request head (its first, or
            the next one after an answer); idle and slow clients are closed after it.
        keep_alive_s: seconds an idle connection is kept after an answer.
        drain_s: seconds a stop (SIGTERM, Ctrl-C) waits for requests in flight.
        max_head_bytes: largest request head (request line and headers).
    """

    max_query_chars: int = 1000
    max_k: int = 100
    max_connections: int = 2048
    max_waiting_queries: int = 128
    thumbnail_threads: int = 2
    max_waiting_thumbnails: int = 256
    head_timeout_s: float = 30.0
    keep_alive_s: int = 5
    drain_s: int = 30
    max_head_bytes: int = 16 * 1024

    def __post_init__(self) -> None:
        for field in fields(self):
            if not getattr(self, field.name) > 0:
                raise ValueError(f"ServeLimits.{field.name} must be positive, got {getattr(self, field.name)!r}")


class Busy(Exception):
    """Too much work already waits for a pool (answered 503)."""


class BoundedPool:
    """A fixed number of worker threads, and a cap on the calls waiting for them.

    ``pending`` is touched only from the event loop's thread, so it needs no lock.
    """

    def __init__(self, threads: int, max_waiting: int, name: str, what: str):
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self.capacity, self.what, self.pending = threads + max_waiting, what, 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread.

        Raises:
            Busy: ``threads + max_waiting`` calls are already running or waiting.
        """
        if self.pending >= self.capacity:
            raise Busy(
                f"the server is busy: {self.pending} {self.what} are running or waiting, its limit. Try again shortly."
            )
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self.pending -= 1

    def close(self) -> None:
        """Drop the calls still waiting and wait for the running ones."""
        self._executor.shutdown(wait=True, cancel_futures=True)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": message}`` on one line."""
    return JSONResponse({"error": " ".join(message.split())}, status, headers={**NO_STORE, **(headers or {})})


def _shorten(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def explain(exc: RequestValidationError, limits: ServeLimits) -> str:
    """One line for a query parameter out of bounds (FastAPI's first error), naming the limit."""
    first = exc.errors()[0]
    name, value = first["loc"][-1], first.get("input")
    if name == "k":
        return f"k must be a whole number from 1 to {limits.max_k} (results to return); got {_shorten(value)}."
    if name == "q" and isinstance(value, str):
        return f"q must be at most {limits.max_query_chars} characters; this one has {len(value)}."
    return f"{name}: {first.get('msg', 'invalid')}."


def _add_error_handlers(app: FastAPI, limits: ServeLimits) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if exc.errors() and exc.errors()[0]["loc"][0] == "path":  # /thumb/x: not an id, so not indexed
            return error(404, f"no indexed image {_shorten(exc.errors()[0].get('input'))}.")
        return error(400, explain(exc, limits))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error(404, f"no such page: {request.url.path[:200]}")
        return error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> JSONResponse:
        return error(503, str(exc), {"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        return error(500, "internal error: the server's log has the details.")


def _thumbnail_route(app: FastAPI, service: SearchService, pool: BoundedPool) -> None:
    @app.get("/thumb/{item}", summary="A JPEG thumbnail of indexed image ITEM", response_class=Response)
    async def thumbnail(item: int) -> Response:
        if not service.has_thumbnail(item):
            if service.index.kind != "images":
                return error(404, f"no indexed image {item}: this index holds captions.")
            return error(404, f"no indexed image {item}: ids run from 0 to {len(service.index) - 1}.")
        try:
            data = service.cached_thumbnail(item) or await pool.run(service.thumbnail, item)
        except DsmdError as exc:
            return error(404, f"indexed image {item} cannot be read now" + (f": {exc}" if service.show_paths else "."))
        return Response(data, media_type="image/jpeg", headers=NO_STORE)


def create_app(service: SearchService, limits: ServeLimits | None = None) -> FastAPI:
    """The app over ``service``; ``app.state.pools`` holds its worker pools (close them after serving)."""
    limits = limits or ServeLimits()
    app = FastAPI(title="dsmd search", version=dsmd.__version__, description=__doc__.split("\n\n")[0])
    queries = BoundedPool(1, limits.max_waiting_queries, "dsmd-query", "queries")
    thumbs = BoundedPool(limits.thumbnail_threads, limits.max_waiting_thumbnails, "dsmd-thumb", "thumbnails")
    app.state.pools = (queries, thumbs)
    _add_error_handlers(app, limits)

    @app.get("/", include_in_schema=False)
    @app.get("/index.html", include_in_schema=False)
    async def page() -> Response:
        return Response(PAGE, media_type="text/html; charset=utf-8", headers=NO_STORE)

    @app.get("/api/search", summary="Rank the index's items for a caption")
    async def search(
        # (defaults rather than Annotated: the limits are locals, which string annotations cannot see)
        q: str = Query("", max_length=limits.max_query_chars, description="the caption"),
        k: int = Query(10, ge=1, le=limits.max_k, description="how many results"),
    ) -> JSONResponse:
        if not q.strip():
            return error(400, "the query is empty: give a caption to search for (?q=a+red+kangaroo).")
        try:
            result = await queries.run(service.search, q, k)
        except DsmdError as exc:
            return error(400, str(exc))
        return JSONResponse(result, headers=NO_STORE)

    @app.get("/api/info", summary="What the index holds and which model answers")
    async def info() -> JSONResponse:
        limits_shown = {"max_query_chars": limits.max_query_chars, "max_k": limits.max_k}
        return JSONResponse({**service.info(), "limits": limits_shown}, headers=NO_STORE)

    _thumbnail_route(app, service, thumbs)
    return app
