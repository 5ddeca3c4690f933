"""The ``dsmd`` command line: every command, its options and its examples (parsing only)."""

from __future__ import annotations

import argparse

import dsmd

EXAMPLES = {
    "demo": "dsmd demo --out demo_out",
    "extract": "dsmd extract --config demo store=runs/store",
    "import-features": "dsmd import-features --config demo store=runs/imported teacher.name_or_path=FEATURES_FOLDER\n"
    "  dsmd import-features --config demo store=runs/imported --trust-pickle \\\n"
    "      --train train_image_feats.pkl train_text_feats.pkl --val val_image.npy val_text.npy",
    "train": "dsmd train --config demo store=runs/store out_dir=runs/exp1 train.epochs=2\n"
    "  dsmd train --resume out_dir=runs/exp1",
    "eval": "dsmd eval --checkpoint runs/exp1/checkpoints/best.pt --split test --json\n"
    "  dsmd eval --store runs/store --split test",
    "verify": "dsmd verify runs/store",
    "export": "dsmd export --checkpoint demo_out/train/checkpoints/best.pt --out demo_out/export --onnx",
    "index": "dsmd index --model demo_out/export --images /usr/share/tuxpaint/stamps/animals --out demo_out/index\n"
    "  dsmd index --teacher-store demo_out/store --split test --out demo_out/teacher_index\n"
    "  torchrun --nproc_per_node 8 -m dsmd index --model EXPORT --images LIST.txt --device cuda "
    "--index-kind ivfpq --out big_index",
    "search": 'dsmd search --index demo_out/index --text "a red kangaroo" -k 5\n'
    '  dsmd search --index demo_out/teacher_index --model demo_out/export --text "a kangaroo" --json',
    "serve": "dsmd serve --index demo_out/index --port 8000",
    "report": "dsmd report demo_out/train",
    "efficiency": "dsmd efficiency --checkpoint demo_out/train/checkpoints/best.pt --device auto\n"
    "  dsmd efficiency --checkpoint runs/exp1/checkpoints/best.pt --json --repeats 20",
    "plot-space": "dsmd plot-space --checkpoint demo_out/train/checkpoints/best.pt --out demo_out/feature_space.png\n"
    "  dsmd plot-space --checkpoint runs/exp1/checkpoints/best.pt --store moved/store --split val --out val_space.png",
    "build-benchmark": "dsmd build-benchmark --out benchmark_data",
    "zero-shot": "dsmd zero-shot my_classes/ --model demo_out/export --out result.json\n"
    "  dsmd zero-shot my_classes/ --teacher demo --templates prompts.txt",
    "sweep": "dsmd sweep offline_table5_balancer --jobs 2\n  dsmd sweep offline_table4_losses offline_table5_balancer offline_table6_l2 --jobs 2\n  dsmd sweep my_sweep.yaml train.epochs=2 --print-commands",
}


# dsmd.inference.onnx_runtime.RUNTIMES (not imported here: the parser loads no torch)
RUNTIME_CHOICES = ("torch", "onnx", "int8", "auto")


def _add_runtime(q: argparse.ArgumentParser, when: str = "") -> None:
    q.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        default="torch",
        help=f"{when}what runs an export: torch, onnx (its float32 ONNX files) or int8 (dsmd export --int8) on "
        "ONNX Runtime, auto (the fastest it has); default: torch",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dsmd",
        description="Distil a large image-text model into a small dual encoder (DSMD).",
        epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()) + "\n\n"
        "Documentation: docs/ in the repository (start at docs/index.md), or as a local site:\n"
        "  bash scripts/setup.sh --dev && .venv/bin/mkdocs serve    # in the repository; then open http://127.0.0.1:8000/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"dsmd {dsmd.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        q = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=f"example:\n  {EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        q.add_argument("--quiet", action="store_true", help="no progress bars")
        return q

    def config_args(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--config",
            help="YAML file, or the name of a packaged config: demo (the default), "
            "paper_f30k_beit3_base, paper_coco_beit3_large, ... (src/dsmd/configs)",
        )
        q.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=3e-4")

    q = add("demo", "Run the whole pipeline on the embedded offline default (Tux Paint stamps, offline teacher).")
    q.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    q.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the demo config")

    q = add("extract", "Run the teacher once and write its features into a feature store.")
    config_args(q)
    q.add_argument("--overwrite", action="store_true", help="replace a store built differently")

    q = add(
        "import-features",
        "Write a feature store from teacher features computed elsewhere "
        "(.npy/.npz/.pt/.safetensors/.pkl; see dsmd.extraction.importer).",
    )
    config_args(q)
    for split in ("train", "val", "test"):
        q.add_argument(
            f"--{split}",
            nargs="+",
            metavar="FILE",
            help=f"the {split} split's IMAGE and TEXT feature files, or one file with both "
            "(default: teacher.name_or_path, a file or folder)",
        )
    q.add_argument("--image-key", help="entry holding the image features (default: image, img_feats or image_feats)")
    q.add_argument("--text-key", help="entry holding the text features (default: text, txt_feats or text_feats)")
    q.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="how far repeated rows of one image may differ, relative L2 (default: 1e-3)",
    )
    q.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow .pkl files (and .pt files holding more than tensors): unpickling runs code in the file",
    )
    q.add_argument("--overwrite", action="store_true", help="replace a store built differently")

    q = add("train", "Distil a student from a feature store.")
    config_args(q)
    q.add_argument("--resume", action="store_true", help="continue the run in out_dir from its last checkpoint")

    q = add("eval", "Retrieval metrics of a student checkpoint or of a feature store on a split.")
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="student checkpoint written by `dsmd train`")
    src.add_argument("--store", help="feature store written by `dsmd extract` (scores the teacher's features)")
    q.add_argument("--split", default="test", help="train, val or test (default: test)")
    q.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    q.add_argument("--export", help="with --checkpoint: score this export of it instead (in --runtime)")
    _add_runtime(q, "with --export: ")
    q.add_argument(
        "--gallery",
        choices=("student", "teacher"),
        default="student",
        help="with --checkpoint: teacher scores the student's queries against the teacher's stored features "
        "(asymmetric retrieval)",
    )
    q.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="with --checkpoint: which data to score (data.*=...), train.device, train.eval_batch_size",
    )

    q = add(
        "verify",
        "Read a feature store, an index, an export or a checkpoint in full: every file against the "
        "sha256 recorded when it was written, every item parsed, every value finite.",
    )
    q.add_argument("path", help="a feature store, an index or an export folder, or a checkpoint file")

    q = add(
        "export",
        "Write a trained student as a self-contained folder (safetensors, tokenizer, preprocessing; "
        "a transformers model when it can be one; ONNX with --onnx).",
    )
    q.add_argument("--checkpoint", required=True, help="a checkpoint written by `dsmd train`")
    q.add_argument("--out", required=True, help="the export folder to write")
    q.add_argument("--onnx", action="store_true", help="also write image_encoder.onnx and text_encoder.onnx")
    q.add_argument(
        "--int8",
        action="store_true",
        help="also write INT8 ONNX encoders (implies --onnx): calibrated on the run's training images, "
        "each kept only if it passes the gate on the val split (dsmd_export.int8 in config.json)",
    )
    q.add_argument("--overwrite", action="store_true", help="replace an existing export folder")

    q = add("index", "Encode images (or captions) into a search index; run again to add new ones.")
    q.add_argument("--out", required=True, help="the index folder")
    q.add_argument("--model", help="export folder or checkpoint that encodes the items")
    _add_runtime(q)
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--images",
        nargs="+",
        metavar="PATH",
        help="image folders (recursive), image files, or "
        "files listing images (.txt one a line, .jsonl / .csv with an image field)",
    )
    what.add_argument("--texts", metavar="FILE", help="a text file of captions, one a line")
    what.add_argument(
        "--teacher-store",
        metavar="STORE",
        help="take the teacher's stored image features of --split (nothing is encoded)",
    )
    q.add_argument("--split", default="test", help="with --teacher-store: train, val or test (default: test)")
    q.add_argument(
        "--index-kind",
        choices=("flat", "hnsw", "ivfpq", "auto"),
        help="flat (exact), hnsw (approximate, ~1.8 KB an item at D=384), ivfpq (compressed, ~110 B an item, "
        "re-ranked from float16 vectors on disk), auto (flat up to 250,000 items, ivfpq above); default: "
        "the existing index's kind, auto for a new one",
    )
    q.add_argument("--approximate", action="store_true", help="the same as --index-kind hnsw")
    q.add_argument("--nlist", type=int, help="ivfpq: inverted lists (default: the power of 2 nearest 4 sqrt(N))")
    q.add_argument("--pq-m", type=int, help="ivfpq: bytes per code, a divisor of D (default: the largest up to D/4)")
    q.add_argument("--pq-bits", type=int, help="ivfpq: bits per sub-quantiser index (default: 8)")
    q.add_argument(
        "--nprobe",
        type=int,
        help="ivfpq: lists a query scans (default: the smallest from max(8, nlist/64), doubling, whose "
        "recall@10 measured at build time is at least 0.95)",
    )
    q.add_argument(
        "--shard", metavar="K/N", help="keep only shard K of N (counted from 0) of the items, by a hash of each"
    )
    q.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu; under torchrun: each rank's GPU)")

    q = add("search", "Search an index with a caption or an image.")
    q.add_argument("--index", required=True, nargs="+", help="an index folder (dsmd index), or every shard of one")
    query = q.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a caption to search for")
    query.add_argument("--image", help="an image to search with")
    q.add_argument("-k", type=int, default=10, help="results to show (default: 10)")
    q.add_argument("--model", help="the query model (default: the one that built the index)")
    _add_runtime(q)
    q.add_argument("--json", action="store_true", help='print {"query", "results": [{"path", "score"}], "ms"}')
    q.add_argument("--device", default="cpu")

    q = add(
        "build-benchmark",
        "Build the offline benchmark (~3,300 captioned photos, emoji and clip art from "
        "Debian packages) as a manifest, deterministically, and one out-of-domain manifest per source held out "
        "(manifest_ood_SOURCE.jsonl).",
    )
    q.add_argument("--out", default="benchmark_data", help="the folder to write (default: benchmark_data)")
    q.add_argument(
        "--unpaired",
        action="store_true",
        help="also write OUT/unpaired/: images without captions and captions without images from what the "
        "benchmark does not use (no benchmark image, no Tux Paint stamp), for data.unpaired_images / "
        "data.unpaired_texts",
    )
    q.add_argument(
        "--zero-shot",
        action="store_true",
        help="also write OUT/zero_shot/clipart/<category>/: the clip art test images by category, for dsmd zero-shot",
    )
    q.add_argument(
        "--pairs",
        type=float,
        nargs="+",
        metavar="FRACTION",
        help="also write, for each manifest, one per FRACTION keeping that share of its training images as "
        "pairs (nested: one permutation) and the rest as pools without pairs (M_pairs_<percent>.jsonl, "
        "..._pool_images.jsonl, ..._pool_captions.jsonl)",
    )

    q = add(
        "zero-shot",
        "Zero-shot classification of a folder of class folders, as CLIP_benchmark reports it (top-1, top-5, "
        "mean per-class recall), by a student or a config's teacher.",
    )
    q.add_argument("folder", help="a folder with one sub-folder of images per class (its name is the class name)")
    who = q.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", help="a student: an export folder or a checkpoint")
    who.add_argument("--teacher", help="a config (packaged name or YAML) whose teacher is scored")
    _add_runtime(q)
    q.add_argument("--classnames", help="a file of class names, one a line, in the folders' sorted order")
    q.add_argument("--templates", help="a file of prompt templates, one a line with {c} for the class name")
    q.add_argument("--out", help="also write the result as CLIP_benchmark's JSON record here")

    q = add("sweep", "Run a sweep (a grid or named variants, times seeds) and write its mean ± std table and plots.")
    q.add_argument(
        "sweep",
        nargs="+",
        metavar="SWEEP [key=value]",
        help="sweep YAML files, or names of packaged ones (src/dsmd/configs/sweeps), several running as one pool "
        "(runs they share run once); then key=value overrides applied to every run",
    )
    q.add_argument("--jobs", type=int, default=1, help="runs at a time (the CPU threads are shared; one GPU each)")
    q.add_argument("--print-commands", action="store_true", help="print the runs as torchrun command lines instead")

    q = add(
        "report",
        "Draw a training run's losses, balancer weights and validation to PNG, measure its best checkpoint "
        "against the teacher (dsmd efficiency) and draw both feature spaces (dsmd plot-space), all linked from "
        "RUN/report.md.",
    )
    q.add_argument("run", help="a training run folder (dsmd train's out_dir)")
    q.add_argument("--no-measure", action="store_true", help="the training plots only (no efficiency, no PCA)")
    q.add_argument("--device", default="cpu", help="where to measure: cpu, cuda or auto (default: cpu)")

    q = add(
        "efficiency",
        "Parameters (per tower), latency at batch 1 and 32, throughput and peak memory of a checkpoint's student "
        "and its teacher, on real test images and captions (the paper's Table 3).",
    )
    q.add_argument("--checkpoint", required=True, help="a checkpoint written by `dsmd train`")
    q.add_argument("--json", action="store_true", help="print the measurements as one JSON object")
    q.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    q.add_argument("--repeats", type=int, default=10, help="timed runs per figure; the median is shown (default: 10)")

    q = add(
        "plot-space",
        "Draw the teacher's and the student's features of a split in the teacher's top 3 principal components "
        "(3-D and PC1/PC2 views; images red, captions blue) to a PNG (the paper's Figure 2).",
    )
    q.add_argument("--checkpoint", required=True, help="a checkpoint written by `dsmd train`")
    q.add_argument("--out", required=True, help="the PNG file to write")
    q.add_argument("--split", default="test", help="train, val or test (default: test)")
    q.add_argument("--store", help="the feature store with the teacher's features (default: the checkpoint's store)")
    q.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    q.add_argument(
        "--max-points", type=int, default=1000, help="at most this many images and captions drawn (default: 1000)"
    )

    q = add("serve", "Serve a search page and a JSON API over an index.")
    q.add_argument("--index", required=True, nargs="+", help="an index folder (dsmd index), or every shard of one")
    q.add_argument("--model", help="the query model (default: the one that built the index)")
    _add_runtime(q)
    q.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    q.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    q.add_argument("--device", default="cpu")
    q.add_argument(
        "--show-paths",
        action="store_true",
        help="show the indexed files' paths as stored (default: relative to the indexed folders)",
    )
    return p
