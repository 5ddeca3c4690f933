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
        "overrides",
        nargs="*",
        metavar="key=value",
        help="with --checkpoint: which data to score (data.*=...), train.device, train.eval_batch_size",
    )

    q = add("verify", "Check every file of a feature store against its manifest (sha256, finite values).")
    q.add_argument("store", help="the feature store folder")
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
        metrics, about = score_checkpoint(args.checkpoint, args.split, args.overrides, progress=progress)
    if args.json:
        print(
            json.dumps({**metrics, "split": about["split"], "images": about["images"], "captions": about["captions"]})
        )
        return
    print(
        f"{about['model']} on {about['data']}, split {about['split']}: {about['images']} images, "
        f"{about['captions']} captions"
        + (f" (overrides: {' '.join(about['overrides'])})" if about["overrides"] else "")
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
