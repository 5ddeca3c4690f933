"""Size and row-read rate of a memory-mapped feature store at the MSCOCO train scale.

A split of 113,287 images and 566,747 captions (Karpathy train + restval), D = 768, random
unit-norm features, written with :func:`dsmd.store.writer.write_split` as float32 and
float16, each as one file and as shards of ``--shard-rows`` rows. For each store: its size on
disk, the write time (including the sha256 of every file), and the rate at which
:meth:`SplitFeatures.image_rows` / :meth:`SplitFeatures.text_rows` return random batches
(``--batch`` image rows + ``--batch`` caption rows per step, what one training step reads):

* ``cold``: the store's pages dropped from the page cache first (``posix_fadvise
  DONTNEED`` on its files, nothing system-wide), ``--cold-batches`` steps;
* ``warm``: the files read once beforehand (in the page cache), ``--batches`` steps.

Integrity (:mod:`dsmd.store.integrity`): the time to open the store (manifest, sizes and
headers only), to verify every file from a cold cache (sha256 and finite values: what the first
use of a store that arrived from elsewhere costs), and to verify it again once stamped.

Rows/s counts image and caption rows; MB/s is stored bytes (rows x D x 2 or 4) per second,
10^6 bytes. Prints a table and a JSON line; ``--json PATH`` also writes the JSON there.

    .venv/bin/python benchmarks/bench_store.py [--images 113287] [--captions 566747] [--dim 768]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from dsmd.runtime.files import write_json_atomic
from dsmd.store import FeatureStore, SplitFeatures, write_split
from dsmd.store.manifest import seal


def _write(folder: Path, feats: SplitFeatures, dtype: str, shard_rows: int | None) -> float:
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    records = write_split(folder, "train", feats, dtype, shard_rows)
    seconds = time.perf_counter() - t0
    manifest = {
        "format_version": 1,
        "teacher": {"kind": "benchmark"},
        "normalized": True,
        "dtype": dtype,
        "dim": feats.dim,
        "splits": {
            "train": {"fingerprint": "benchmark", "num_images": feats.num_images, "num_captions": feats.num_captions}
        },
        "files": {"train": records},
        "shard_rows": shard_rows,
    }
    write_json_atomic(folder / "manifest.json", seal(manifest))
    return seconds


def _verify(folder: Path) -> dict:
    """Open the store (stat and headers only), then hash and check every file from a cold cache,
    then verify again (stamped: nothing is hashed)."""
    t0 = time.perf_counter()
    store = FeatureStore.open(folder)
    open_s = time.perf_counter() - t0
    _drop_cache(folder)
    t0 = time.perf_counter()
    hashed = store.verify(force=True)
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = store.verify()
    stamped_s = time.perf_counter() - t0
    return {
        "open_ms": round(1e3 * open_s, 2),
        "verify_cold_s": round(cold_s, 2),
        "verify_mb_per_s": round(hashed / cold_s / 1e6, 1),
        "verify_stamped_ms": round(1e3 * stamped_s, 2),
        "stamped_bytes_hashed": again,
    }


def _drop_cache(folder: Path) -> None:
    for file in folder.glob("*.safetensors"):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _warm(folder: Path) -> None:
    for file in folder.glob("*.safetensors"):
        with open(file, "rb") as f:
            while f.read(1 << 24):
                pass


def _rate(split: SplitFeatures, steps: int, batch: int, seed: int) -> float:
    """Seconds for ``steps`` random batches of ``batch`` image rows and ``batch`` caption rows."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(split.num_images, (steps, batch), generator=g)
    captions = torch.randint(split.num_captions, (steps, batch), generator=g)
    views = torch.zeros(batch, dtype=torch.long)
    t0 = time.perf_counter()
    for i, j in zip(images, captions, strict=True):
        split.image_rows(i, views)
        split.text_rows(j)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=113_287)
    p.add_argument("--captions", type=int, default=566_747)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=2000, help="warm steps")
    p.add_argument("--cold-batches", type=int, default=200, help="cold steps")
    p.add_argument("--shard-rows", type=int, default=65_536)
    p.add_argument("--dir", help="where to write the stores (default: a temporary folder, removed)")
    p.add_argument("--json", help="write the JSON result here")
    args = p.parse_args()

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="dsmd_bench_store_"))
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    image = torch.nn.functional.normalize(torch.randn(args.images, args.dim, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(args.captions, args.dim, generator=g), dim=-1)
    feats = SplitFeatures(image, text, torch.arange(args.captions) * args.images // args.captions)
    print(
        f"random features: {args.images} images + {args.captions} captions x {args.dim} "
        f"({time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    results = []
    try:
        for dtype in ("float16", "float32"):
            for shard_rows in (None, args.shard_rows):
                folder = root / f"{dtype}-{shard_rows or 'one'}"
                write_s = _write(folder, feats, dtype, shard_rows)
                files = sorted(folder.glob("*.safetensors"))
                size = sum(f.stat().st_size for f in files)
                row_bytes = args.dim * (2 if dtype == "float16" else 4)
                entry = {
                    "dtype": dtype,
                    "shard_rows": shard_rows,
                    "files": len(files),
                    "bytes": size,
                    "write_s": round(write_s, 2),
                }
                for mode, steps in (("cold", args.cold_batches), ("warm", args.batches)):
                    if mode == "cold":
                        _drop_cache(folder)
                    else:
                        _warm(folder)
                    split = FeatureStore.open(folder).split("train")  # a fresh mapping each time
                    seconds = _rate(split, steps, args.batch, seed=1 if mode == "cold" else 2)
                    assert split.memory_mapped
                    rows = 2 * args.batch * steps
                    entry[mode] = {
                        "steps": steps,
                        "seconds": round(seconds, 3),
                        "rows_per_s": round(rows / seconds),
                        "mb_per_s": round(rows * row_bytes / seconds / 1e6, 1),
                        "ms_per_step": round(1e3 * seconds / steps, 3),
                    }
                entry["verify"] = _verify(folder)
                results.append(entry)
                print(
                    f"{dtype} {shard_rows or 'one file'}: {size / 1e9:.2f} GB, "
                    f"cold {entry['cold']['rows_per_s']} rows/s, warm {entry['warm']['rows_per_s']} rows/s; open "
                    f"{entry['verify']['open_ms']} ms, verify {entry['verify']['verify_mb_per_s']} MB/s "
                    f"(stamped: {entry['verify']['verify_stamped_ms']} ms)",
                    flush=True,
                )
                shutil.rmtree(folder)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)

    head = f"{'dtype':8} {'layout':>14} {'size GB':>8} {'write s':>8} {'':>5} {'rows/s':>9} {'MB/s':>7} {'ms/step':>8}"
    print()
    print(
        f"split {args.images} images + {args.captions} captions, D={args.dim}; a step reads "
        f"{args.batch} image rows + {args.batch} caption rows at random"
    )
    print(head)
    for e in results:
        layout = f"{e['files']} shards" if e["shard_rows"] else "one file"
        first = [e["dtype"], layout, f"{e['bytes'] / 1e9:.2f}", str(e["write_s"])]
        for mode in ("cold", "warm"):
            m = e[mode]
            dtype, lay, size, write = first if mode == "cold" else [""] * 4
            print(
                f"{dtype:8} {lay:>14} {size:>8} {write:>8} {mode:>5} {m['rows_per_s']:>9} {m['mb_per_s']:>7} "
                f"{m['ms_per_step']:>8}"
            )
    out = {
        "benchmark": "store_rows",
        "images": args.images,
        "captions": args.captions,
        "dim": args.dim,
        "batch": args.batch,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "torch": torch.__version__,
        "results": results,
    }
    line = json.dumps(out)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")


if __name__ == "__main__":
    main()
