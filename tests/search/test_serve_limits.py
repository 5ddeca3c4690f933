"""dsmd serve under load: idle sockets cost no thread and stop no answer, connections and waiting
work are capped, idle and slow clients are closed, SIGTERM and Ctrl-C drain and exit 0.

No assertion on time: every wait has a deadline that only a failure reaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from serving import PATIENCE_S, get_json, open_idle, read_until_closed, running, wait_for

from dsmd.search.app import BoundedPool, Busy
from dsmd.search.server import SearchService, ServeLimits

HERE = Path(__file__).parent


def test_200_idle_sockets_neither_stop_a_search_nor_add_threads(served):
    server = served["server"]
    assert get_json(f"{served['url']}/api/search?q=warm+up")[0] == 200  # the query worker exists from here on
    # the warm-up's connection (and any an earlier test kept alive) counts until the server sees it closed
    wait_for(lambda: server.open_connections == 0, "the earlier connections to close")
    threads, connections = threading.active_count(), 0
    idle = open_idle(served["port"], 200)
    try:
        wait_for(lambda: server.open_connections >= connections + 200, "the server to hold the 200 idle sockets")
        status, body = get_json(f"{served['url']}/api/search?q=a+blue+square&k=3")
        assert status == 200 and len(body["results"]) == 3
        assert threading.active_count() <= threads + 2, "threads grew with idle connections"
        assert server.open_connections >= connections + 200  # still held, not dropped to make room
    finally:
        for sock in idle:
            sock.close()


def test_a_connection_beyond_the_limit_is_a_503_and_closed(gallery):
    limits = ServeLimits(max_connections=3)
    with running(SearchService(gallery["index"], gallery["encoder"]), limits) as served:
        idle = open_idle(served["port"], 3)
        try:
            wait_for(lambda: served["server"].open_connections == 3, "three idle connections")
            (extra,) = open_idle(served["port"], 1)
            answer = read_until_closed(extra)
            extra.close()
        finally:
            for sock in idle:
                sock.close()
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer
        assert b'{"error": "the server holds 3 connections, its limit. Try again shortly."}' in answer
        wait_for(lambda: served["server"].open_connections == 0, "the idle connections to close")
        assert get_json(f"{served['url']}/api/info")[0] == 200


@pytest.mark.parametrize("sent", [b"", b"GET /api/info HTTP/1.1\r\nHost: x\r\n"], ids=["idle", "half-a-head"])
def test_clients_that_send_no_whole_request_are_closed(gallery, sent):
    limits = ServeLimits(head_timeout_s=0.2)
    with running(SearchService(gallery["index"], gallery["encoder"]), limits) as served:
        (sock,) = open_idle(served["port"], 1)
        sock.sendall(sent)
        assert read_until_closed(sock) == b""  # closed by the server, no answer
        sock.close()


def test_a_kept_alive_connection_gets_a_new_head_deadline(gallery):
    # The request is sent right after connecting; 5 s of head deadline is far more than that takes
    # on a loaded machine, and the re-armed deadline then closes the connection within the test.
    limits = ServeLimits(head_timeout_s=5.0, keep_alive_s=600)
    with running(SearchService(gallery["index"], gallery["encoder"]), limits) as served:
        (sock,) = open_idle(served["port"], 1)
        sock.sendall(b"GET /api/info HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_until_closed(sock)  # keep-alive lasts 600 s: only the head deadline closes it
        sock.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"count":3' in answer


def test_work_beyond_the_pool_and_its_queue_is_refused():
    release = threading.Event()

    async def scenario() -> list:
        pool = BoundedPool(threads=1, max_waiting=1, name="test", what="queries")
        running_ = [asyncio.ensure_future(pool.run(release.wait, PATIENCE_S)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Busy, match="2 queries are running or waiting, its limit"):
            await pool.run(release.wait, PATIENCE_S)
        release.set()
        done = await asyncio.gather(*running_)
        assert await pool.run(lambda: "again") == "again"
        pool.close()
        return done

    assert asyncio.run(scenario()) == [True, True]


def _first_line(proc: subprocess.Popen) -> str:
    """The first line ``proc`` prints ("" if it prints none within :data:`PATIENCE_S`)."""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(PATIENCE_S)
    return line[0] if line else ""


def _serve_held(index: Path, hold: Path) -> subprocess.Popen:
    """``dsmd serve`` whose searches wait for the file ``hold`` to go (``_held_serve.py``)."""
    env = {**os.environ, "DSMD_TEST_HOLD": str(hold)}
    cmd = [sys.executable, str(HERE / "_held_serve.py"), "serve", "--index", str(index), "--port", "0", "--quiet"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_signal_drains_requests_in_flight_and_exits_0(gallery, tmp_path, sig):
    hold = tmp_path / "hold"
    hold.write_text("")
    proc = _serve_held(gallery["index"].path, hold)
    try:
        first = _first_line(proc)
        assert first.startswith("serving ") and "(Ctrl-C or SIGTERM stops)" in first, first
        url = first.split(" on ", 1)[1].split()[0]
        answer: dict = {}
        client = threading.Thread(
            target=lambda: answer.update(zip(("status", "body"), get_json(url + "api/search?q=red"), strict=True))
        )
        client.start()
        wait_for(lambda: (tmp_path / "hold.entered").exists(), "the search to reach the model")
        proc.send_signal(sig)  # the search is in flight: it must still be answered
        hold.unlink()
        client.join(PATIENCE_S)
        out, err = proc.communicate(timeout=PATIENCE_S)
    finally:
        proc.kill()
    assert answer["status"] == 200 and len(answer["body"]["results"]) == 3
    assert proc.returncode == 0, err
    assert out == f"dsmd serve: stopped by {sig.name} after answering 1 requests\n"
    assert "Traceback" not in err


def _raw(port: int, request: bytes) -> bytes:
    """What the server answers to ``request`` sent at once, until it closes the connection."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as sock:
        sock.sendall(request)
        with contextlib.suppress(ConnectionResetError):
            sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock)


@pytest.mark.parametrize("filler", [15 * 1024, 17 * 1024, 64 * 1024], ids=["15KB", "17KB", "64KB"])
def test_a_request_head_beyond_16_kb_is_refused_whole_or_in_pieces(gallery, filler):
    head = b"GET /api/info HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * filler + b"\r\nConnection: close\r\n\r\n"
    with running(SearchService(gallery["index"], gallery["encoder"])) as served:
        answer = _raw(served["port"], head)
    assert answer.startswith(b"HTTP/1.1 200" if len(head) <= 16 * 1024 else b"HTTP/1.1 431"), answer[:200]


def test_protocol_errors_are_one_log_line_each(gallery, capsys):
    broken = [
        b"POST /api/search?q=x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n\r\n",
        b"GET /api/info HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"NOT HTTP AT ALL\r\n\r\n",
    ]
    capsys.readouterr()
    with running(SearchService(gallery["index"], gallery["encoder"])) as served:
        answers = [_raw(served["port"], request) for request in broken]
    assert all(a.startswith(b"HTTP/1.1 4") for a in answers), [a[:60] for a in answers]
    logged = capsys.readouterr().err.splitlines()
    assert len(logged) == len(broken) and all(line.startswith("dsmd serve: ") for line in logged), logged
