"""The ``dsmd`` command: a thin shell over the library.

Errors the user can fix are printed as one line (no traceback) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import dsmd
from dsmd.errors import DsmdError

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
    "  dsmd index --teacher-store demo_out/store --split test --out demo_out/teacher_index",
    "search": 'dsmd search --index demo_out/index --text "a red kangaroo" -k 5\n'
    '  dsmd search --index demo_out/teacher_index --model demo_out/export --text "a kangaroo" --json',
    "serve": "dsmd serve --index demo_out/index --port 8000",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dsmd",
        description="Distil a large image-text model into a small dual encoder (DSMD).",
        epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()),
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

    q = add("verify", "Check every file of a feature store against its manifest (sha256, finite values).")
    q.add_argument("store", help="the feature store folder")

    q = add(
        "export",
        "Write a trained student as a self-contained folder (safetensors, tokenizer, preprocessing; "
        "a transformers model when it can be one; ONNX with --onnx).",
    )
    q.add_argument("--checkpoint", required=True, help="a checkpoint written by `dsmd train`")
    q.add_argument("--out", required=True, help="the export folder to write")
    q.add_argument("--onnx", action="store_true", help="also write image_encoder.onnx and text_encoder.onnx")
    q.add_argument("--overwrite", action="store_true", help="replace an existing export folder")

    q = add("index", "Encode images (or captions) into a search index; run again to add new ones.")
    q.add_argument("--out", required=True, help="the index folder")
    q.add_argument("--model", help="export folder or checkpoint that encodes the items")
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
    q.add_argument("--approximate", action="store_true", help="HNSW instead of exact search (for millions)")
    q.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")

    q = add("search", "Search an index with a caption or an image.")
    q.add_argument("--index", required=True, help="an index folder (dsmd index)")
    query = q.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a caption to search for")
    query.add_argument("--image", help="an image to search with")
    q.add_argument("-k", type=int, default=10, help="results to show (default: 10)")
    q.add_argument("--model", help="the query model (default: the one that built the index)")
    q.add_argument("--json", action="store_true", help='print {"query", "results": [{"path", "score"}], "ms"}')
    q.add_argument("--device", default="cpu")

    q = add("serve", "Serve a search page and a JSON API over an index.")
    q.add_argument("--index", required=True, help="an index folder (dsmd index)")
    q.add_argument("--model", help="the query model (default: the one that built the index)")
    q.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    q.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    q.add_argument("--device", default="cpu")
    return p


def _load(args):
    from dsmd.config import load_config, packaged_config

    return load_config(args.config or packaged_config("demo"), args.overrides)


def _import_features(args):
    from dsmd.extraction.importer import DEFAULT_TOLERANCE, import_features

    files: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        for item in getattr(args, split) or []:  # `--train A B key=value`: the override is not a file
            if "=" in item and not Path(item).exists():
                args.overrides.append(item)
            else:
                files.setdefault(split, []).append(item)
    # The store's teacher is "imported" whatever the config file names; with files given per
    # split the store is named after their folder unless the command line names it.
    args.overrides = ["teacher.kind=imported", *args.overrides]
    if files and not any(o.startswith("teacher.name_or_path=") for o in args.overrides):
        args.overrides.append("teacher.name_or_path=null")
    return import_features(
        _load(args),
        files or None,
        image_key=args.image_key,
        text_key=args.text_key,
        tolerance=DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance,
        trust_pickle=args.trust_pickle,
        overwrite=args.overwrite,
    )


def _eval(args, progress: bool) -> None:
    from dsmd.reports import format_table
    from dsmd.scoring import score_checkpoint, score_store

    if args.store:
        if args.overrides:
            raise DsmdError("--store takes no key=value overrides (the store holds everything it needs).")
        metrics, about = score_store(args.store, args.split, progress=progress)
    else:
        metrics, about = score_checkpoint(
            args.checkpoint, args.split, args.overrides, progress=progress, gallery=args.gallery
        )
    if args.json:
        print(
            json.dumps({**metrics, "split": about["split"], "images": about["images"], "captions": about["captions"]})
        )
        return
    print(
        f"{about['model']} on {about['data']}, split {about['split']}: {about['images']} images, "
        f"{about['captions']} captions"
        + (f" (overrides: {' '.join(about['overrides'])})" if about["overrides"] else "")
        + (f"; gallery: {about['gallery']}" if "gallery" in about else "")
    )
    print(format_table({Path(args.checkpoint or args.store).name: metrics}))


def _verify(args, progress: bool) -> None:
    import time

    from dsmd.store import FeatureStore

    store = FeatureStore.open(args.store)
    t0 = time.perf_counter()
    hashed = store.verify(force=True, progress=progress)
    seconds = time.perf_counter() - t0
    print(
        f"feature store {store.path}: every file matches its manifest and holds finite values "
        f"({hashed / 1e6:.1f} MB hashed in {seconds:.1f} s)"
    )


def _index(args, progress: bool) -> None:
    from dsmd.inference import load_student
    from dsmd.search.build import index_images, index_teacher_store, index_texts

    if args.teacher_store:
        if args.model:
            raise DsmdError("--teacher-store takes the teacher's stored features: it needs no --model.")
        index_teacher_store(args.out, args.teacher_store, args.split, args.approximate, progress)
        return
    if not args.model:
        raise DsmdError("give the model that encodes the items: --model EXPORT_DIR (or a checkpoint).")
    encoder = load_student(args.model, args.device)
    if args.images:
        index_images(args.out, encoder, args.images, args.approximate, progress)
    else:
        index_texts(args.out, encoder, args.texts, args.approximate, progress)


def _search(args) -> None:
    from dsmd.search.index import Index
    from dsmd.search.query import query_model, run_query

    index = Index.open(args.index)
    result = run_query(index, query_model(index, args.model, args.device), args.text, args.image, args.k)
    if args.json:
        print(json.dumps(result))
        return
    for rank, hit in enumerate(result["results"], start=1):
        print(f"{rank:3d}  {hit['score']:.4f}  {hit.get('path', hit.get('text'))}")
    print(f"({len(result['results'])} of {len(index)} {index.kind}, {result['ms']:.1f} ms)")


def _serve(args) -> None:
    from dsmd.search.index import Index
    from dsmd.search.query import query_model
    from dsmd.search.server import SearchService, make_server

    index = Index.open(args.index)
    server = make_server(
        SearchService(index, query_model(index, args.model, args.device)), args.host, args.port, quiet=args.quiet
    )
    host, port = server.server_address[:2]
    print(f"serving {index.path} ({len(index)} {index.kind}) on http://{host}:{port}/  (Ctrl-C stops)")
    try:
        server.serve_forever()
    finally:
        server.server_close()


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    progress = not args.quiet and sys.stderr.isatty()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its per-load "Loading weights" bars drown ours
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they happen in logs too
    if args.command == "demo":
        from dsmd.demo import run_demo

        run_demo(args.out, args.overrides, progress=progress)
    elif args.command == "extract":
        from dsmd.extraction import extract

        store = extract(
            _load(args),
            overwrite=args.overwrite,
            progress=progress,
            overwrite_hint="Pass --overwrite to replace it, or choose another store=PATH.",
        )
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports for all
            print(f"feature store: {store.path} ({store.dim}-d, teacher {store.teacher.get('name')})")
    elif args.command == "import-features":
        store = _import_features(args)
        print(
            f"feature store: {store.path} ({store.dim}-d, imported from {store.teacher['source']}). "
            f"Train with teacher.kind=imported teacher.name_or_path={store.teacher['source']} store={store.path}"
        )
    elif args.command == "train":
        from dsmd.training import train

        if args.resume:  # the run's own saved config, plus what the command line changes
            result = train(
                _load(args),
                resume=True,
                progress=progress,
                resume_overrides=[o for o in args.overrides if not o.startswith("out_dir=")],
            )
        else:
            result = train(_load(args), progress=progress)
        if result.rank == 0:  # under torchrun, rank 0 validates and reports for all
            print(f"best val RSUM {result.best_rsum:.1f} at epoch {result.best_epoch}: {result.best_checkpoint}")
    elif args.command == "eval":
        _eval(args, progress)
    elif args.command == "verify":
        _verify(args, progress)
    elif args.command == "export":
        from dsmd.export.writer import export_student

        export_student(args.checkpoint, args.out, onnx=args.onnx, overwrite=args.overwrite)
    elif args.command == "index":
        _index(args, progress)
    elif args.command == "search":
        _search(args)
    elif args.command == "serve":
        _serve(args)
    return 0


def main(argv: list[str] | None = None) -> None:
    from dsmd.runtime.files import os_error

    try:
        code = run(argv)
    except DsmdError as exc:
        print(f"dsmd: error: {' '.join(str(exc).split())}", file=sys.stderr)
        code = 2
    except OSError as exc:  # a full disk, a read-only folder: the environment, not a bug
        print(f"dsmd: error: {os_error(exc)}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("dsmd: interrupted", file=sys.stderr)
        code = 130
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun worker whose work is done and whose process group is destroyed: gloo's
        # threads can still abort the interpreter's teardown ("terminate called without an
        # active exception": once in about a dozen test-suite runs here), which torchrun reports as a failed
        # run after everything was written. Leave without the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
