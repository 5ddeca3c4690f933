"""Using the demo's student: search latency, indexing throughput, ONNX against PyTorch, asymmetric RSUM.

Needs a finished demo (``dsmd demo --out DIR``; default ``demo_out``). In one run, on this machine:

1. exports the demo's best checkpoint (``dsmd export --onnx``) into ``DIR/export``;
2. **indexing throughput**: encodes the same ``--throughput-images`` demo images (decoding
   included) with the student and with the teacher, images per second;
3. **search latency** over a 10,000-item index of the demo's width (D = 384): the student's
   features of 1,000 demo images (``dsmd index``), each repeated 10 times with small noise
   (an exact inner-product index scans every vector, so its cost does not depend on where the
   vectors came from). A text query to its top 10 (tokenisation, the student's text tower,
   the index), p50 / p90 over ``--queries`` captions after warm-up: in Python
   (:func:`dsmd.search.query.run_query`) and through ``dsmd serve``'s HTTP API on 127.0.0.1
   (same index, same process, ``urllib``);
4. **ONNX**: ``image_encoder.onnx`` / ``text_encoder.onnx`` in onnxruntime against PyTorch eager,
   batch 32, median time and the largest absolute difference;
5. **asymmetric retrieval**: the demo report's ``asymmetric`` RSUM (the student's queries
   against the teacher's stored test features) against the student's own.

``--screenshot FILE`` also saves the search page in headless chromium (needs selenium and
chromium). Prints a table and a JSON line; ``--json PATH`` writes the JSON.

    .venv/bin/python benchmarks/bench_search.py [--demo demo_out] [--screenshot docs/serve.png]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import torch

import dsmd
from dsmd.config import load_config
from dsmd.data.datasets import load_dataset
from dsmd.export.writer import export_student
from dsmd.search.index import Index, write_index
from dsmd.search.query import run_query
from dsmd.search.server import SearchService, make_server
from dsmd.teachers import build_teacher


def _median_ms(fn, repeats: int = 7, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _percentiles(times: list[float]) -> dict:
    ms = sorted(t * 1e3 for t in times)
    return {"p50_ms": round(statistics.median(ms), 2), "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 2)}


def throughput(student, teacher, paths: list[str]) -> dict:
    """Images per second, decoding included, student and teacher on the same images."""
    t0 = time.perf_counter()
    student.encode_images(paths, batch_size=32, progress=False)
    student_s = time.perf_counter() - t0
    from dsmd.data.images import load_image

    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(paths), 32):
            pixels = torch.stack([teacher.image_transform(load_image(p)) for p in paths[start : start + 32]])
            teacher.encode_images(pixels)
    teacher_s = time.perf_counter() - t0
    return {
        "images": len(paths),
        "student_images_per_s": round(len(paths) / student_s, 1),
        "teacher_images_per_s": round(len(paths) / teacher_s, 1),
    }


def latency(student, index: Index, captions: list[str], queries: int) -> dict:
    for caption in captions[:5]:
        run_query(index, student, text=caption, k=10)
    python_times = []
    for caption in captions[:queries]:
        t0 = time.perf_counter()
        run_query(index, student, text=caption, k=10)
        python_times.append(time.perf_counter() - t0)
    server = make_server(SearchService(index, student), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api/search?k=10&q="
    http_times = []
    try:
        for i, caption in enumerate(captions[: queries + 5]):
            t0 = time.perf_counter()
            with urllib.request.urlopen(url + urllib.parse.quote(caption)) as response:
                json.loads(response.read())
            if i >= 5:
                http_times.append(time.perf_counter() - t0)
    finally:
        server.shutdown()
        server.server_close()
    return {
        "items": len(index),
        "dim": index.dim,
        "queries": len(python_times),
        "python": _percentiles(python_times),
        "http": _percentiles(http_times),
    }


def onnx_against_eager(export: Path, student, paths: list[str], captions: list[str]) -> dict:
    import onnxruntime as ort

    backend = student.backend
    pixels = torch.stack([student._pixels(p) for p in paths[:32]])
    tokens = backend.tokenize(captions[:32])
    image_session = ort.InferenceSession(str(export / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    text_session = ort.InferenceSession(str(export / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    feeds_image = {"pixel_values": pixels.numpy()}
    feeds_text = {"input_ids": tokens["input_ids"].numpy(), "attention_mask": tokens["attention_mask"].numpy()}
    with torch.inference_mode():
        eager_image = backend.encode_images(pixels).numpy()
        eager_text = backend.encode_texts(tokens["input_ids"], tokens["attention_mask"]).numpy()
        result = {
            "batch": 32,
            "image_eager_ms": round(_median_ms(lambda: backend.encode_images(pixels)), 1),
            "image_onnx_ms": round(_median_ms(lambda: image_session.run(["features"], feeds_image)), 1),
            "text_eager_ms": round(
                _median_ms(lambda: backend.encode_texts(tokens["input_ids"], tokens["attention_mask"])), 2
            ),
            "text_onnx_ms": round(_median_ms(lambda: text_session.run(["features"], feeds_text)), 2),
        }
    result["image_max_abs_diff"] = float(np.abs(image_session.run(["features"], feeds_image)[0] - eager_image).max())
    result["text_max_abs_diff"] = float(np.abs(text_session.run(["features"], feeds_text)[0] - eager_text).max())
    return result


def screenshot(index: Index, student, out: Path, query: str) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = make_server(SearchService(index, student), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    profile = tempfile.mkdtemp(prefix="dsmd_chromium_")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        browser.find_element(By.ID, "q").send_keys(query)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(browser, 60).until(
            lambda b: b.execute_script(
                "return document.querySelectorAll('#grid img').length > 0 && "
                "[...document.images].every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        browser.save_screenshot(str(out))
    finally:
        browser.quit()
        server.shutdown()
        server.server_close()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", default="demo_out", help="a finished `dsmd demo --out DIR` folder")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--throughput-images", type=int, default=500)
    p.add_argument("--screenshot", help="save the search page here (PNG)")
    p.add_argument("--json", help="write the JSON result here")
    args = p.parse_args()
    demo = Path(args.demo)
    report = json.loads((demo / "report.json").read_text()) if (demo / "report.json").is_file() else None
    if report is None or not (demo / "train" / "checkpoints" / "best.pt").is_file():
        sys.exit(f"{demo} holds no finished demo. Run `dsmd demo --out {demo}` first.")
    torch.set_num_threads(torch.get_num_threads())
    export = demo / "export"
    export_student(demo / "train" / "checkpoints" / "best.pt", export, onnx=True, overwrite=True, log=lambda *_: None)
    student = dsmd.load_student(export)
    cfg = load_config("demo")
    data = load_dataset(cfg.data)
    paths = [p for split in ("train", "val", "test") for p in data[split].image_paths]
    captions = [c for split in ("test", "val", "train") for c in data[split].captions]
    work = Path(tempfile.mkdtemp(prefix="dsmd_bench_search_"))
    try:
        teacher = build_teacher(cfg.teacher, "cpu")
        reps = -(-args.throughput_images // len(paths))
        result = {"throughput": throughput(student, teacher, (paths * reps)[: args.throughput_images])}
        del teacher
        base = student.encode_images((paths * 3)[:1000], progress=False)
        rng = np.random.default_rng(0)
        vectors = np.concatenate([base + rng.normal(0, 0.01, base.shape).astype(np.float32) for _ in range(10)])
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        items = [{"id": i, "path": (paths * 30)[i]} for i in range(len(vectors))]
        write_index(work / "index", {"kind": "images", "model": student.describe()}, items, vectors, [], False)
        index = Index.open(work / "index")
        result["search"] = latency(student, index, captions, args.queries)
        result["onnx"] = onnx_against_eager(export, student, paths, captions)
        result["asymmetric"] = {
            "student_rsum": round(report["student"]["rsum"], 2),
            "asymmetric_rsum": round(report.get("asymmetric", {}).get("rsum", float("nan")), 2),
        }
        if args.screenshot:
            real = Index.open(_real_index(export, paths[:120], work))
            screenshot(real, student, Path(args.screenshot), "a red kangaroo")
            result["screenshot"] = args.screenshot
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"] = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    _print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def _real_index(export: Path, paths: list[str], work: Path) -> Path:
    from dsmd.search.build import index_images

    listing = work / "gallery.txt"
    listing.write_text("\n".join(paths) + "\n")
    index_images(work / "real", dsmd.load_student(export), [str(listing)], progress=False, log=lambda *_: None)
    return work / "real"


def _print(r: dict) -> None:
    t, s, o, a = r["throughput"], r["search"], r["onnx"], r["asymmetric"]
    print(
        f"indexing throughput ({t['images']} demo images, decoding included): student "
        f"{t['student_images_per_s']} img/s, teacher {t['teacher_images_per_s']} img/s"
    )
    print(
        f"text query -> top 10 of {s['items']} x {s['dim']}: python p50 {s['python']['p50_ms']} ms "
        f"(p90 {s['python']['p90_ms']}), HTTP p50 {s['http']['p50_ms']} ms (p90 {s['http']['p90_ms']})"
    )
    print(
        f"ONNX vs eager, batch 32: images {o['image_onnx_ms']} vs {o['image_eager_ms']} ms "
        f"(max diff {o['image_max_abs_diff']:.1e}), captions {o['text_onnx_ms']} vs {o['text_eager_ms']} ms "
        f"(max diff {o['text_max_abs_diff']:.1e})"
    )
    print(
        f"demo test RSUM: student {a['student_rsum']}, asymmetric (student queries, teacher gallery) "
        f"{a['asymmetric_rsum']}"
    )
    print(json.dumps(r))


if __name__ == "__main__":
    main()
