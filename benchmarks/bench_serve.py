"""Load on ``dsmd serve``: queries per second, p50 and p99 latency at 1, 8 and 64 concurrent
clients, then the same with 1,000 idle connections held open.

Needs nothing but dsmd's own offline packages. In one run, on this machine:

1. draws ``--images`` coloured shapes with captions (:mod:`dsmd.data.synthetic`);
2. starts the server in a child process (this script with ``--child``): the demo config's
   student at its initial weights (the offline pretrained towers, no training) encodes the
   images, and their features are tiled with small noise to an ``--items``-item exact index, as
   ``bench_search.py`` builds its own; then :func:`dsmd.search.server.serve`, the code of ``dsmd
   serve``, with its default limits (and torch on one thread, as ``dsmd serve`` sets it);
3. here, clients on one asyncio loop (one keep-alive connection each) ask ``/api/search?q=CAPTION&k=10``
   back to back for ``--seconds`` per level, after a warm-up; before each level of the second
   round, 1,000 raw sockets connect and send nothing (and are counted still open after it).
   Latency is the client's (queueing included); "model p50" is the answer's own ``ms`` (the
   caption through the student's text tower and the index, without the wait for the worker);
4. reads the server's threads, memory and open descriptors from ``/proc`` after each level, and
   stops it with SIGTERM (its exit status is reported).

The clients share the machine with the server: on a loaded machine the figures say so (the
load average is printed beside them). Prints a markdown table; ``--json PATH`` writes the JSON.

    .venv/bin/python benchmarks/bench_serve.py [--seconds 5] [--json bench_serve.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

IDLE = 1000
CLIENTS = (1, 8, 64)
DIM = 384  # the offline teacher's width, as in bench_search.py


def _child(work: Path, items: int) -> None:
    """Build the index and serve it until SIGTERM (the server's process)."""
    import numpy as np
    import torch

    from dsmd.config import load_config, packaged_config
    from dsmd.inference import Encoder
    from dsmd.models import build_student
    from dsmd.search.index import Index, write_index
    from dsmd.search.server import SearchService, serve

    torch.manual_seed(0)
    student = build_student(load_config(packaged_config("demo")).student, DIM).eval()
    encoder = Encoder(
        student,
        student.image_transform(train=False),
        DIM,
        True,
        "bench",
        "demo student at init",
        "init",
        torch.device("cpu"),
    )
    paths = sorted(str(p) for p in (work / "images").glob("*.png"))
    base = encoder.encode_images(paths, progress=False)
    rng = np.random.default_rng(0)
    reps = -(-items // len(paths))
    vectors = np.concatenate([base + rng.normal(0, 0.01, base.shape).astype(np.float32) for _ in range(reps)])[:items]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = [{"id": i, "path": paths[i % len(paths)]} for i in range(items)]
    write_index(work / "index", {"kind": "images", "model": encoder.describe()}, labels, vectors, [], False)
    sys.exit(0 if serve(SearchService(Index.open(work / "index"), encoder), "127.0.0.1", 0, quiet=True) else 1)


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> tuple[int, float]:
    """One GET on a kept-alive connection: its status and the ``ms`` the server spent in the model and index."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")
    )
    body = await reader.readexactly(length)
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["ms"] if status == 200 else 0.0


async def _client(
    port: int, paths: list[str], start: int, until: float, times: list[float], model_ms: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = start
    while time.perf_counter() < until:
        t0 = time.perf_counter()
        status, ms = await _ask(reader, writer, paths[i % len(paths)])
        if status == 200:
            times.append(time.perf_counter() - t0)
            model_ms.append(ms)
        else:
            errors.append(status)
        i += 1
    writer.close()


async def _level(port: int, paths: list[str], clients: int, seconds: float) -> dict:
    """``clients`` clients back to back for ``seconds`` (after a quarter of that as warm-up)."""
    await asyncio.gather(
        *(_client(port, paths, c, time.perf_counter() + seconds / 4, [], [], []) for c in range(clients))
    )
    times: list[float] = []
    model_ms: list[float] = []
    errors: list[int] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(port, paths, 7 * c, t0 + seconds, times, model_ms, errors) for c in range(clients)))
    elapsed = time.perf_counter() - t0
    ms = sorted(t * 1e3 for t in times)
    return {
        "clients": clients,
        "queries": len(ms),
        "queries_per_s": round(len(ms) / elapsed, 1),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1),
        "model_p50_ms": round(statistics.median(model_ms), 1),
        "errors": len(errors),
    }


def _proc(pid: int) -> dict:
    """The server's threads, resident memory and open descriptors, from /proc."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {
        "threads": int(status["Threads"]),
        "rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def _wait_fds(pid: int, done, what: str) -> None:
    """Wait until the server's count of open descriptors satisfies ``done``."""
    deadline = time.monotonic() + 120
    while not done(_proc(pid)["fds"]):
        if time.monotonic() > deadline:
            sys.exit(f"gave up waiting for the server to {what}")
        time.sleep(0.05)


def _open_idle(port: int, pid: int, count: int, baseline: int) -> list[socket.socket]:
    """``count`` connections that send nothing, once the server has accepted them all."""
    idle = [socket.create_connection(("127.0.0.1", port), timeout=120) for _ in range(count)]
    _wait_fds(pid, lambda fds: fds >= baseline + count, f"accept {count} idle connections")
    return idle


def _still_open(idle: list[socket.socket]) -> int:
    alive = 0
    for sock in idle:
        sock.setblocking(False)
        try:
            alive += sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def _start_server(work: Path, items: int) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-u", __file__, "--child", str(work), "--items", str(items)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("serving "):
            return proc, int(line.split(" on http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    sys.exit(f"the server did not start (exit status {proc.wait()})")


def _run(args: argparse.Namespace, work: Path) -> dict:
    from dsmd.data.synthetic import write_synthetic_dataset

    manifest = write_synthetic_dataset(work / "images", num_images=args.images, captions_per_image=5, seed=1)
    captions = [c for line in manifest.read_text().splitlines() for c in json.loads(line)["captions"]]
    paths = [f"/api/search?k=10&q={urllib.parse.quote_plus(c)}" for c in captions]
    proc, port = _start_server(work, args.items)
    rows = []
    baseline = _proc(proc.pid)["fds"]
    try:
        for idle_count in (0, IDLE):
            for clients in CLIENTS:
                idle = _open_idle(port, proc.pid, idle_count, baseline) if idle_count else []
                row = {"idle": idle_count, **asyncio.run(_level(port, paths, clients, args.seconds)), **_proc(proc.pid)}
                row["idle_still_open"] = _still_open(idle)
                for sock in idle:
                    sock.close()
                _wait_fds(proc.pid, lambda fds: fds <= baseline + 2, "close the idle connections")
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    return {"rows": rows, "stop": {"exit_status": proc.returncode, "line": (out.strip().splitlines() or [""])[-1]}}


def _table(result: dict) -> str:
    lines = [
        "| idle connections | clients | queries/s | p50 ms | p99 ms | model p50 ms | errors | server threads | server RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        idle = f"{r['idle']} ({r['idle_still_open']} still open after)" if r["idle"] else "0"
        lines.append(
            f"| {idle} | {r['clients']} | {r['queries_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['model_p50_ms']} | {r['errors']} "
            f"| {r['threads']} | {r['rss_mb']} |"
        )
    m = result["machine"]
    lines.append(
        f"\n{result['items']} items x {DIM}, k=10, {result['seconds']} s per level; {m['cpus']} CPUs, load average "
        f"{m['load_before']} before and {m['load_after']} after (clients and server share the machine); "
        f"SIGTERM: exit {result['stop']['exit_status']}, {result['stop']['line']}"
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="generated images (default: 200)")
    p.add_argument("--items", type=int, default=10_000, help="items in the index (default: 10,000)")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per level (default: 5)")
    p.add_argument("--json", help="write the JSON result here")
    p.add_argument("--child", metavar="WORK", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(Path(args.child), args.items)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4096:  # 1,000 idle sockets and the clients', here and in the server
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="dsmd_bench_serve_") as work:
        result = {"items": args.items, "seconds": args.seconds, **_run(args, Path(work))}
    result["machine"] = {
        "cpus": os.cpu_count(),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    print(_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
