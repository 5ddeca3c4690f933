"""One export in three runtimes: PyTorch eager float32, ONNX Runtime float32 and INT8 (``dsmd export --int8``).

For each runtime: RSUM on the run's test split and on held-out kinds of images (manifests, as
``dsmd demo`` builds them in ``DIR/heldout/``), the cosine of its features to eager float32's,
the encoder files' sizes, and latency per image at batch 1 and 32 and per caption at batch 1,
timed interleaved (eager, onnx, int8, eager, ... over ``--rounds`` rounds: medians and
quartiles) on one thread each, so that the ratios hold on a loaded machine.

    .venv/bin/python benchmarks/bench_int8.py --export EXPORT --checkpoint CKPT \\
        [--heldout demo_out/heldout/emoji.jsonl demo_out/heldout/clipart.jsonl] [--json OUT.json]

``--checkpoint`` gives the run's data (its config); ``--load`` adds N busy processes beside the
timing (``--load 2``: the two-hog measurement). ``--teacher-onnx DIR`` also exports the run's
teacher to float32 ONNX in DIR (the offline teacher: its image path, pixels to features, and its
MiniLM with mean pooling) and times it in the same rounds, for the student's latency share in
one runtime.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
from pathlib import Path

import numpy as np
import torch

import dsmd
from dsmd.data.datasets import load_split
from dsmd.data.images import load_image
from dsmd.evaluation.latency import interleaved_times
from dsmd.evaluation.retrieval import retrieval_metrics
from dsmd.inference.exported import IMAGE_ONNX, TEXT_ONNX
from dsmd.inference.onnx_runtime import int8_files
from dsmd.models.text_pooling import mean_pool
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


class _TeacherImages(torch.nn.Module):
    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, pixel_values):
        return self.teacher._encode_images(pixel_values)


class _TeacherTexts(torch.nn.Module):
    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, input_ids, attention_mask):
        states = self.teacher.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(states, attention_mask)


class _OnnxTeacher:
    """The offline teacher's two paths as float32 ONNX sessions (one thread each), for timing."""

    def __init__(self, cfg, folder: Path, data):
        import onnxruntime as ort

        from dsmd.export.onnx_export import export_module
        from dsmd.teachers import build_teacher

        if cfg.teacher.kind != "offline":
            raise SystemExit(f"--teacher-onnx exports the offline teacher; this run's is {cfg.teacher.kind}")
        teacher = build_teacher(cfg.teacher, torch.device("cpu"))
        self.teacher, self.transform = teacher, teacher.image_transform
        folder.mkdir(parents=True, exist_ok=True)
        pixels = torch.stack([self.transform(load_image(p)) for p in list(data.image_paths)[:2]])
        tokens = teacher.tokenizer(list(data.captions)[:2], padding=True, return_tensors="pt")
        batch, length = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("length", min=2, max=4096)
        export_module(
            _TeacherImages(teacher).eval(),
            (pixels,),
            ["pixel_values"],
            {"pixel_values": {0: batch}},
            folder / "teacher_image.onnx",
        )
        export_module(
            _TeacherTexts(teacher).eval(),
            (tokens["input_ids"], tokens["attention_mask"]),
            ["input_ids", "attention_mask"],
            {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}},
            folder / "teacher_text.onnx",
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        cpu = ["CPUExecutionProvider"]
        self.image = ort.InferenceSession(str(folder / "teacher_image.onnx"), options, providers=cpu)
        self.text = ort.InferenceSession(str(folder / "teacher_text.onnx"), options, providers=cpu)
        with torch.inference_mode():
            want = teacher._encode_images(pixels)
        got = self.image.run(["features"], {"pixel_values": pixels.numpy()})[0]
        self.max_difference = float(np.abs(got - want.numpy()).max())

    def encode_images(self, pixel_values: torch.Tensor):
        return self.image.run(["features"], {"pixel_values": pixel_values.numpy()})[0]

    def encode_captions(self, texts: list[str]):
        t = self.teacher.tokenizer(
            texts, padding=True, truncation=True, max_length=self.teacher.max_length, return_tensors="np"
        )
        feeds = {k: t[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
        return self.text.run(["features"], feeds)[0]


def _latency(encoders: dict, data, rounds: int, teacher: _OnnxTeacher | None = None) -> dict:
    paths = list(data.image_paths)
    pixels = {b: torch.stack([encoders["torch"]._pixels(paths[i % len(paths)]) for i in range(b)]) for b in (1, 32)}
    models = {r: (e.backend, pixels) for r, e in encoders.items()}
    if teacher is not None:
        theirs = {
            b: torch.stack([teacher.transform(load_image(paths[i % len(paths)])) for i in range(b)]) for b in (1, 32)
        }
        models["teacher_onnx"] = (teacher, theirs)
    caption = [data.captions[0]]
    out = {}
    for what, batch in (("image_b1", 1), ("image_b32", 32), ("caption_b1", 1)):
        calls = {
            r: (lambda m=m, x=x, batch=batch: m.encode_images(x[batch]))
            if what.startswith("image")
            else (lambda m=m: m.encode_captions(caption))
            for r, (m, x) in models.items()
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
    p.add_argument("--teacher-onnx", help="folder to export the run's teacher to ONNX in, to time it too")
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
    teacher = _OnnxTeacher(cfg, Path(args.teacher_onnx), sets["test"]) if args.teacher_onnx else None
    stop = multiprocessing.Event()
    hogs = [multiprocessing.Process(target=_hog, args=(stop,), daemon=True) for _ in range(args.load)]
    for h in hogs:
        h.start()
    try:
        latency = _latency(encoders, sets["test"], args.rounds, teacher)
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
    if teacher is not None:
        t = latency["teacher_onnx"]
        share = (latency["int8"]["image_b1"]["median_ms"] + latency["int8"]["caption_b1"]["median_ms"]) / (
            t["image_b1"]["median_ms"] + t["caption_b1"]["median_ms"]
        )
        result["teacher_onnx"] = {"max_difference_from_pytorch": teacher.max_difference, "int8_share_b1": share}
        print(
            f"teacher in float32 ONNX (largest difference from PyTorch {teacher.max_difference:.1e}): image "
            f"{t['image_b1']['median_ms']:.2f} ms, caption {t['caption_b1']['median_ms']:.2f} ms at batch 1; "
            f"the INT8 student's image + caption: {100 * share:.1f}% of the teacher's"
        )
    for tower in ("image", "text"):
        print(
            f"{tower} encoder file: int8 {sizes['int8'][tower] / 1e6:.2f} MB, float32 {sizes['onnx'][tower] / 1e6:.2f} MB ({100 * sizes['int8'][tower] / sizes['onnx'][tower]:.0f}%)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
