"""One export in three runtimes: PyTorch eager float32, ONNX Runtime float32 and INT8 (``dsmd export --int8``).

For each runtime: RSUM on the run's test split and on held-out kinds of images (manifests, as
``dsmd demo`` builds them in ``DIR/heldout/``), the cosine of its features to eager float32's,
the encoder files' sizes, and latency per image at batch 1 and 32 and per caption at batch 1,
timed interleaved (eager, onnx, int8, eager, ... over ``--rounds`` rounds: medians and
quartiles) on one thread each, so that the ratios hold on a loaded machine.

    .venv/bin/python benchmarks/bench_int8.py --export EXPORT --checkpoint CKPT \\
        [--heldout demo_out/heldout/emoji.jsonl demo_out/heldout/clipart.jsonl] [--json OUT.json]

``--checkpoint`` gives the run's data (its config); ``--load`` adds N busy processes beside the
timing (``--load 2``: the two-hog measurement).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
from pathlib import Path

import torch

import dsmd
from dsmd.data.datasets import load_split
from dsmd.evaluation.latency import interleaved_times
from dsmd.evaluation.retrieval import retrieval_metrics
from dsmd.inference.exported import IMAGE_ONNX, TEXT_ONNX
from dsmd.inference.onnx_runtime import int8_files
from dsmd.reports.heldout import heldout_data
from dsmd.training.checkpoint import checkpoint_config, load_checkpoint

RUNTIMES = ("torch", "onnx", "int8")


def _hog(stop) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2147483648


def _accuracy(encoders: dict, sets: dict) -> dict:
    rows = {}
    for name, data in sets.items():
        caption_image = torch.tensor(data.caption_image)
        base = None
        for runtime, enc in encoders.items():
            image, text = enc.encode_images(list(data.image_paths)), enc.encode_texts(list(data.captions))
            if base is None:
                base = (image, text)
            cos_i, cos_t = (image * base[0]).sum(1), (text * base[1]).sum(1)
            metrics = retrieval_metrics(torch.from_numpy(image), torch.from_numpy(text), caption_image)
            rows.setdefault(name, {})[runtime] = {
                "rsum": round(metrics["rsum"], 2),
                "image_cosine_mean": round(float(cos_i.mean()), 5),
                "image_cosine_min": round(float(cos_i.min()), 5),
                "text_cosine_mean": round(float(cos_t.mean()), 5),
                "images": data.num_images,
            }
    return rows


def _latency(encoders: dict, data, rounds: int) -> dict:
    paths = list(data.image_paths)
    pixels = {b: torch.stack([encoders["torch"]._pixels(paths[i % len(paths)]) for i in range(b)]) for b in (1, 32)}
    caption = [data.captions[0]]
    out = {}
    for what, batch in (("image_b1", 1), ("image_b32", 32), ("caption_b1", 1)):
        calls = {
            r: (lambda e=e, batch=batch: e.backend.encode_images(pixels[batch]))
            if what.startswith("image")
            else (lambda e=e: e.backend.encode_captions(caption))
            for r, e in encoders.items()
        }
        times = interleaved_times(calls, rounds=rounds, warmup=3)
        for runtime, seconds in times.items():
            q = statistics.quantiles([s * 1000 / batch for s in seconds], n=4)
            out.setdefault(runtime, {})[what] = {
                "median_ms": round(statistics.median(seconds) * 1000 / batch, 3),
                "q1_ms": round(q[0], 3),
                "q3_ms": round(q[2], 3),
            }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--heldout", nargs="*", default=[])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--load", type=int, default=0, help="busy processes beside the timing")
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(1)
    export = Path(args.export)
    meta = json.loads((export / "config.json").read_text())["dsmd_export"]
    if not int8_files(meta):
        raise SystemExit(f"{export} has no INT8 encoders: export it with dsmd export --int8")
    encoders = {r: dsmd.load_student(export, runtime=r, threads=1) for r in RUNTIMES}
    cfg = checkpoint_config(load_checkpoint(args.checkpoint))
    sets = {"test": load_split(cfg.data, "test")}
    sets.update({Path(m).stem: heldout_data(m) for m in args.heldout})
    accuracy = _accuracy(encoders, sets)
    stop = multiprocessing.Event()
    hogs = [multiprocessing.Process(target=_hog, args=(stop,), daemon=True) for _ in range(args.load)]
    for h in hogs:
        h.start()
    try:
        latency = _latency(encoders, sets["test"], args.rounds)
    finally:
        stop.set()
        for h in hogs:
            h.join()
    files = int8_files(meta)
    sizes = {
        "onnx": {t: (export / f).stat().st_size for t, f in (("image", IMAGE_ONNX), ("text", TEXT_ONNX))},
        "int8": {t: (export / f).stat().st_size for t, f in files.items()},
    }
    result = {
        "export": str(export),
        "load_processes": args.load,
        "accuracy": accuracy,
        "latency": latency,
        "file_bytes": sizes,
        "int8": meta["int8"],
    }
    print(f"| set | {' | '.join(f'{r} RSUM' for r in RUNTIMES)} | int8 image cosine mean / min |")
    print("|---|" + "---|" * (len(RUNTIMES) + 1))
    for name, row in accuracy.items():
        print(
            f"| {name} ({row['torch']['images']} images) | "
            + " | ".join(f"{row[r]['rsum']:.1f}" for r in RUNTIMES)
            + f" | {row['int8']['image_cosine_mean']:.4f} / {row['int8']['image_cosine_min']:.4f} |"
        )
    print(
        f"\n| latency, ms (median; {args.rounds} interleaved rounds, 1 thread, {args.load} busy processes beside) | "
        + " | ".join(RUNTIMES)
        + " |"
    )
    print("|---|" + "---|" * len(RUNTIMES))
    for what in ("image_b1", "image_b32", "caption_b1"):
        print(
            f"| {what.replace('_b', ', batch ')} | "
            + " | ".join(f"{latency[r][what]['median_ms']:.2f}" for r in RUNTIMES)
            + " |"
        )
    for tower in ("image", "text"):
        print(
            f"{tower} encoder file: int8 {sizes['int8'][tower] / 1e6:.2f} MB, float32 {sizes['onnx'][tower] / 1e6:.2f} MB ({100 * sizes['int8'][tower] / sizes['onnx'][tower]:.0f}%)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
