"""Search at scale: flat, hnsw and ivfpq indexes of N items (default 1,000,000), measured.

The gallery is made from real student features: the student encodes the images of
``--images`` (default: the offline benchmark's manifest, 3,269 images), and each of the N
items is a random mixture of three of those features (Dirichlet(1, 1, 1) weights) plus Gaussian
noise (``--noise`` per dimension), renormalised. Mixtures rather than copies: N copies of a few
thousand vectors with small noise would make a query's top 10 near-identical copies of one
image, and recall@10 meaningless. The queries are real captions of the same dataset, encoded by
the student's text tower; the truth is exact search over the float32 gallery.

For each kind (``--kinds``), measured:

- ``build_s``: :func:`dsmd.search.index.write_index` (training, adding, the recall measured at
  build time, writing), and the recall@10 the build measured (200 sampled items, each pushed off
  the gallery by noise: stand-ins for real queries);
- bytes per item on disk (the index folder, and its faiss file alone);
- in a fresh process that serves it as ``dsmd serve`` would (torch on one thread): time to
  open, bytes per item in RAM (the growth of the resident set from before opening to after all
  queries, split into anonymous memory and file pages), p50 / p99 of a caption's query to its
  top 10 with the caption's encoding (:func:`dsmd.search.query.run_query`) and without it
  (``Index.search`` of the encoded caption), and recall@10 of the captions against exact search.

Writes ``OUT.json`` and ``OUT.md`` (default ``docs/results/search_scale``) after each kind; run
again with the same gallery, it keeps the kinds ``OUT.json`` holds and measures the others
(``--fresh``: the kinds of ``--kinds`` again, the others kept), so a long run stopped between
kinds loses only the kind in progress. At 1M items it needs
about 7 GB of RAM and 4 GB of disk in ``--work`` (one kind at a time).

    .venv/bin/python benchmarks/bench_search_scale.py --model EXPORT_OR_CHECKPOINT
    .venv/bin/python benchmarks/bench_search_scale.py --demo demo_out --items 20000 --kinds flat,ivfpq
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

QUERY_K = 10


def _rss() -> dict[str, int]:
    """This process's resident memory in bytes: total, anonymous, file pages (Linux)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in seconds)
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 3)}


def _warm_up(index_path: str, queries: np.ndarray) -> None:
    """Run a small index of the same kind once, then return freed memory to the system: the
    resident set grows afterwards by what the index itself needs, not by library code pages
    touched for the first time or by heap that freed memory would have lent."""
    import ctypes

    from dsmd.search.index import Index, write_index

    meta = json.loads((Path(index_path) / "meta.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        small = np.random.default_rng(0).standard_normal((2000, queries.shape[1])).astype(np.float32)
        items = [{"id": i, "text": str(i)} for i in range(len(small))]
        write_index(Path(tmp) / "i", {"kind": "texts", "model": meta["model"]}, items, small, [], meta["index"]["kind"])
        Index.open(Path(tmp) / "i").search(queries[:5], QUERY_K)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(index_path: str, model: str, work: Path) -> dict:
    """Open the index and query it as ``dsmd serve`` does (run in a fresh process: ``--measure``)."""
    import torch

    import dsmd
    from dsmd.search.engine import recall_at_k
    from dsmd.search.index import Index
    from dsmd.search.query import run_query

    torch.set_num_threads(1)  # as dsmd serve
    captions = json.loads((work / "queries.json").read_text())
    truth = np.load(work / "truth.npy")
    student = dsmd.load_student(model)
    encoded = student.encode_texts(captions, progress=False)
    _warm_up(index_path, encoded)
    before = _rss()
    t0 = time.perf_counter()
    index = Index.open(index_path)
    open_s = time.perf_counter() - t0
    opened = _rss()
    for query in encoded[:20]:  # warm-up
        index.search(query[None], QUERY_K)
    search_s, found = [], []
    for query in encoded:
        t0 = time.perf_counter()
        _, ids = index.search(query[None], QUERY_K)
        search_s.append(time.perf_counter() - t0)
        found.append(ids[0])
    end_to_end_s = []
    for caption in captions:
        t0 = time.perf_counter()
        run_query(index, student, text=caption, k=QUERY_K)
        end_to_end_s.append(time.perf_counter() - t0)
    after = _rss()
    count = len(index)
    return {
        "open_s": round(open_s, 3),
        "ram_bytes_per_item": round((after["VmRSS"] - before["VmRSS"]) / count, 1),
        "ram_anon_bytes_per_item": round((after["RssAnon"] - before["RssAnon"]) / count, 1),
        "ram_file_bytes_per_item": round((after["RssFile"] - before["RssFile"]) / count, 1),
        "ram_after_open_bytes_per_item": round((opened["VmRSS"] - before["VmRSS"]) / count, 1),
        "search_only": _percentiles(search_s),
        "caption_to_top10": _percentiles(end_to_end_s),
        "recall_at_10": round(recall_at_k(np.array(found), truth), 4),
        "queries": len(captions),
    }


def _dataset(manifest: Path, base_images: int, queries: int) -> tuple[list[str], list[str]]:
    """Image paths and query captions of a manifest (``image``, ``captions`` a line), seeded."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    rng = np.random.default_rng(0)
    images = [
        str(manifest.parent / rows[i]["image"]) for i in rng.permutation(len(rows))
    ]  # (relative: to the manifest)
    captions = [c for i in rng.permutation(len(rows)) for c in rows[i]["captions"]]
    return images[: base_images or None], captions[:queries]


def gallery(base: np.ndarray, count: int, noise: float, seed: int = 0) -> np.ndarray:
    """``(count, D)`` float32 unit vectors: mixtures of three rows of ``base (B, D)``, plus noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, base.shape[1]), np.float32)
    for start in range(0, count, 50_000):
        n = min(50_000, count - start)
        picks = rng.integers(0, len(base), size=(n, 3))
        weights = rng.dirichlet([1.0, 1.0, 1.0], size=n).astype(np.float32)
        mixed = np.einsum("nk,nkd->nd", weights, base[picks]) + noise * rng.standard_normal((n, base.shape[1]))
        out[start : start + n] = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
    return out


def _disk(folder: Path, count: int) -> dict[str, float]:
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    return {
        "disk_bytes_per_item": round(sum(sizes.values()) / count, 1),
        "faiss_bytes_per_item": round(sizes["index.faiss"] / count, 1),
        "vectors_bytes_per_item": round(sizes["vectors.npy"] / count, 1),
    }


def run_kind(kind: str, vectors: np.ndarray, items: list[dict], model: dict, model_path: str, work: Path) -> dict:
    from dsmd.search.index import write_index

    folder = work / kind
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    about = write_index(folder, {"kind": "images", "model": model}, items, vectors, [], kind)
    result = {"build_s": round(time.perf_counter() - t0, 1), "build_recall_at_10": about["recall_at_10"]}
    result["params"] = about["params"]
    result.update(_disk(folder, len(items)))
    gc.collect()
    cmd = [sys.executable, __file__, "--measure", str(folder), "--model", model_path, "--work", str(work)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"measuring {kind} failed:\n{done.stderr[-3000:]}")
    result.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return result


def _model_path(args) -> str:
    if args.model:
        return args.model
    checkpoint = Path(args.demo) / "train" / "checkpoints" / "best.pt"
    if not checkpoint.is_file():
        sys.exit(f"{args.demo} holds no trained student. Run `dsmd demo --out {args.demo}`, or give --model.")
    return str(checkpoint)


def _markdown(report: dict) -> str:
    c = report["config"]
    lines = [
        f"# Search at {c['items']:,} items (D = {c['dim']})",
        "",
        f"`{c['command']}` on {report['machine']['cpus']} CPUs ({report['machine']['platform']}), "
        f"{report['machine']['date']}. Gallery: mixtures of the student's features of {c['base_images']:,} real "
        f"images (noise {c['noise']}); queries: {c['queries']} real captions; recall@10 against exact search.",
        "",
        "| kind | build s | disk B/item | RAM B/item (anon + file) | open s | search p50 / p99 ms "
        "| caption -> top 10 p50 / p99 ms | recall@10 captions | recall@10 at build | parameters |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in report["kinds"].items():
        lines.append(
            f"| {kind} | {r['build_s']} | {r['disk_bytes_per_item']:,} | {r['ram_bytes_per_item']:,} "
            f"({r['ram_anon_bytes_per_item']:,} + {r['ram_file_bytes_per_item']:,}) | {r['open_s']} | "
            f"{r['search_only']['p50_ms']} / {r['search_only']['p99_ms']} | "
            f"{r['caption_to_top10']['p50_ms']} / {r['caption_to_top10']['p99_ms']} | {r['recall_at_10']} | "
            f"{r['build_recall_at_10']} | {', '.join(f'{k} {v}' for k, v in r['params'].items()) or '-'} |"
        )
    lines += ["", "Each row's run (a row kept from an earlier run of the same gallery keeps its own):", ""]
    for kind, r in report["kinds"].items():
        lines.append(f"- {kind}: {r.get('date', 'undated')}, `{r.get('command', c['command'])}`")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", help="a student: export folder or checkpoint")
    source.add_argument("--demo", default="demo_out", help="a finished `dsmd demo --out DIR` (its best checkpoint)")
    p.add_argument("--images", default="benchmark_data/manifest.jsonl", help="a manifest: image, captions a line")
    p.add_argument("--items", type=int, default=1_000_000, help="gallery size N (default: 1,000,000)")
    p.add_argument("--kinds", default="flat,hnsw,ivfpq", help="comma-separated index kinds")
    p.add_argument("--queries", type=int, default=1000, help="captions queried (default: 1000)")
    p.add_argument("--base-images", type=int, default=0, help="real images encoded (default 0: all)")
    p.add_argument("--noise", type=float, default=0.01, help="Gaussian noise per dimension (default: 0.01)")
    p.add_argument("--out", default="docs/results/search_scale", help="writes OUT.json and OUT.md")
    p.add_argument("--work", help="folder for the indexes (default: a temporary one, removed)")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="measure the kinds of --kinds again (default: keep those OUT.json holds for the same gallery)",
    )
    p.add_argument("--measure", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.model, Path(args.work))))
        return
    import faiss

    import dsmd
    from dsmd.search.engine import exact_neighbours

    model_path = _model_path(args)
    student = dsmd.load_student(model_path)
    paths, captions = _dataset(Path(args.images), args.base_images, args.queries)
    t0 = time.perf_counter()
    base, ok, _ = student.encode_image_files(paths)
    print(f"encoded {len(ok)} images in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    vectors = gallery(base, args.items, args.noise)
    items = [{"id": i, "path": f"gallery/{i:07d}.jpg"} for i in range(args.items)]
    work = Path(args.work or tempfile.mkdtemp(prefix="dsmd_search_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "queries.json").write_text(json.dumps(captions))
    np.save(work / "truth.npy", exact_neighbours(vectors, student.encode_texts(captions, progress=False), QUERY_K))
    today = time.strftime("%Y-%m-%d")
    config = {
        "items": args.items,
        "dim": int(vectors.shape[1]),
        "base_images": len(ok),
        "noise": args.noise,
        "queries": len(captions),
        "model": model_path,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    report = {
        "config": config,
        "machine": {
            "cpus": os.cpu_count(),
            "faiss_threads": faiss.omp_get_max_threads(),
            "platform": platform.platform(terse=True),
            "date": today,
        },
        "kinds": _measured_before(Path(args.out), config),
    }
    try:
        for kind in args.kinds.split(","):
            if kind in report["kinds"] and not args.fresh:
                print(
                    f"{kind}: measured before ({report['kinds'][kind].get('date', 'undated')}), kept", file=sys.stderr
                )
                continue
            report["kinds"][kind] = {
                **run_kind(kind, vectors, items, student.describe(), model_path, work),
                "date": today,
                "command": config["command"],
            }
            print(json.dumps({kind: report["kinds"][kind]}), file=sys.stderr)
            shutil.rmtree(work / kind, ignore_errors=True)
            _write(Path(args.out), report)  # each kind as it is measured: a stopped run keeps what it did
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    _write(Path(args.out), report)
    print(_markdown(report))


def _measured_before(out: Path, config: dict) -> dict:
    """The kinds an earlier run of the same gallery wrote to ``OUT.json`` (none if it differs)."""
    path = out.with_suffix(".json")
    if not path.is_file():
        return {}
    before = json.loads(path.read_text())
    same = all(before["config"].get(key) == value for key, value in config.items() if key != "command")
    return before["kinds"] if same else {}


def _write(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(_markdown(report))


if __name__ == "__main__":
    main()
