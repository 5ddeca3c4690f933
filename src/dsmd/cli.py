"""The ``dsmd`` command: a thin shell over the library.

Errors the user can fix are printed as one line (no traceback) and exit with status 2; so is a
command refused because another one is writing its output folder (:mod:`dsmd.runtime.lock`).
A command stopped by Ctrl-C exits with status 130, by SIGTERM with 143 (128 + the signal), after
one line saying what is kept and how to continue (:mod:`dsmd.runtime.signals`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from dsmd.cli_parser import build_parser
from dsmd.errors import DsmdError


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
            args.checkpoint,
            args.split,
            args.overrides,
            progress=progress,
            gallery=args.gallery,
            export=args.export,
            runtime=args.runtime,
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
    """``dsmd verify PATH``: a feature store, an index, an export folder or a checkpoint, read in full."""
    import time

    path = Path(args.path)
    t0 = time.perf_counter()
    if (path / "manifest.json").is_file() or not path.exists():
        from dsmd.store import FeatureStore

        store = FeatureStore.open(path)
        hashed = store.verify(force=True, progress=progress)
        print(
            f"feature store {store.path}: every file matches its manifest and holds finite values "
            f"({hashed / 1e6:.1f} MB hashed in {time.perf_counter() - t0:.1f} s)"
        )
    elif (path / "meta.json").is_file():
        from dsmd.search.index import verify_index

        print(verify_index(path))
    elif path.is_dir():
        from dsmd.inference.loading import verify_export

        print(verify_export(path))
    else:
        from dsmd.training.checkpoint import verify_checkpoint

        print(verify_checkpoint(path))


def _index(args, progress: bool) -> None:
    from dsmd.inference import load_student
    from dsmd.search.build import index_images, index_processes, index_teacher_store, index_texts
    from dsmd.search.kinds import IndexOptions
    from dsmd.search.shards import parse_shard

    options = IndexOptions(args.index_kind, args.nlist, args.pq_m, args.pq_bits, args.nprobe)
    common = {"approximate": args.approximate, "progress": progress, "options": options}
    common["shard"] = parse_shard(args.shard) if args.shard else None
    if args.teacher_store and args.model:
        raise DsmdError("--teacher-store takes the teacher's stored features: it needs no --model.")
    if not args.teacher_store and not args.model:
        raise DsmdError("give the model that encodes the items: --model EXPORT_DIR (or a checkpoint).")
    with index_processes(args.device) as ctx:  # (under torchrun: the ranks share the encoding)
        if args.teacher_store:
            index_teacher_store(args.out, args.teacher_store, args.split, ctx=ctx, **common)
        elif args.images:
            index_images(args.out, load_student(args.model, ctx.device, args.runtime), args.images, ctx=ctx, **common)
        else:
            index_texts(args.out, load_student(args.model, ctx.device, args.runtime), args.texts, ctx=ctx, **common)


def _search(args) -> None:
    from dsmd.search.query import query_model, run_query
    from dsmd.search.shards import open_index

    index = open_index(args.index)
    result = run_query(index, query_model(index, args.model, args.device, args.runtime), args.text, args.image, args.k)
    if args.json:
        print(json.dumps(result))
        return
    for rank, hit in enumerate(result["results"], start=1):
        print(f"{rank:3d}  {hit['score']:.4f}  {hit.get('path', hit.get('text'))}")
    print(f"({len(result['results'])} of {len(index)} {index.kind}, {result['ms']:.1f} ms; {index.describe_search()})")


def _serve(args) -> None:
    from dsmd.search.query import query_model
    from dsmd.search.server import SearchService, serve
    from dsmd.search.shards import open_index

    index = open_index(args.index)
    encoder = query_model(index, args.model, args.device, args.runtime)
    serve(SearchService(index, encoder, show_paths=args.show_paths), args.host, args.port, quiet=args.quiet)


def _sweep(args, progress: bool) -> None:
    from dsmd.sweeps import load_sweep, print_commands, run_sweep, write_table
    from dsmd.sweeps.runner import distinct_runs, finished, rerun_failed_hint

    overrides = [a for a in args.sweep if "=" in a]
    names = [a for a in args.sweep if "=" not in a]
    if not names:
        raise DsmdError("dsmd sweep needs a sweep file or a packaged sweep's name before the key=value overrides.")
    sweeps = [load_sweep(name, overrides) for name in names]
    if args.print_commands:
        print("\n".join(print_commands(sweeps)))
        return
    t0 = time.perf_counter()
    failed = run_sweep(sweeps, args.jobs, progress=progress)
    for sweep in sweeps:
        table = write_table(sweep, [r for r in failed if r.sweep == sweep.name])
        print(f"sweep {sweep.name}: {sweep.out_dir / 'sweep.md'} ({len(table['rows'])} variants)")
    print(f"{len(sweeps)} sweep(s) in {time.perf_counter() - t0:.0f} s")
    busy = [r for r in distinct_runs(sweeps) if not finished(r) and r not in failed]
    if busy:
        failures = f"; {len(failed)} failed: {rerun_failed_hint(failed)[:300]}" if failed else ""
        raise DsmdError(
            f"{len(busy)} run(s) skipped: another sweep or command is running them "
            f"({'; '.join(f'{r.variant} (seed {r.seed})' for r in busy)[:600]}){failures}. "
            f"Run the sweep again once they are finished{' (and the failures fixed)' if failed else ''} "
            "to complete its tables: finished runs are kept."
        )
    if failed:
        raise DsmdError(
            f"{len(failed)} of {len(distinct_runs(sweeps))} runs failed: "
            f"{rerun_failed_hint(failed)[:600]}. "
            "Fix the cause and run the sweep again: finished runs are kept."
        )


def _zero_shot(args, progress: bool) -> None:
    from dsmd.runtime.files import write_json_atomic
    from dsmd.scoring import score_zero_shot

    result = score_zero_shot(
        args.folder, args.model, args.teacher, args.runtime, args.classnames, args.templates, progress=progress
    )
    if args.out:
        write_json_atomic(args.out, result)
    m = result["metrics"]
    print(
        f"{result['model']} on {result['dataset']} ({result['images']} images, {result['classes']} classes, "
        f"{result['templates']} templates): top-1 {100 * m['acc1']:.1f}%, top-5 {100 * m['acc5']:.1f}%, "
        f"mean per-class recall {100 * m['mean_per_class_recall']:.1f}%"
    )


def _efficiency(args) -> None:
    from dsmd.reports.efficiency import format_efficiency, measure_efficiency

    result = measure_efficiency(args.checkpoint, device=args.device, repeats=args.repeats)
    print(json.dumps(result) if args.json else format_efficiency(result))


def _plot_space(args, progress: bool) -> None:
    from dsmd.reports.feature_space import plot_feature_space

    r = plot_feature_space(
        args.checkpoint,
        split=args.split,
        out=args.out,
        device=args.device,
        max_points=args.max_points,
        store=args.store,
        progress=progress,
    )
    print(
        f"{r['out']}: {r['n_images']} images and {r['n_captions']} captions of split {r['split']}; PC1-3 explain "
        f"{100 * r['teacher_explained_variance']:.1f}% of the teacher's variance and capture "
        f"{100 * r['student_captured_variance']:.1f}% of the student's"
    )


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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

        export_student(args.checkpoint, args.out, onnx=args.onnx, overwrite=args.overwrite, int8=args.int8)
    elif args.command == "index":
        _index(args, progress)
    elif args.command == "search":
        _search(args)
    elif args.command == "serve":
        _serve(args)
    elif args.command == "build-benchmark":
        from dsmd.data.offline_benchmark import build_offline_benchmark

        build_offline_benchmark(args.out, unpaired=args.unpaired)
        if args.zero_shot:
            from dsmd.data.offline_benchmark import write_zero_shot_folders

            counts = write_zero_shot_folders(args.out, Path(args.out) / "manifest.jsonl")
            print(f"{Path(args.out) / 'zero_shot' / 'clipart'}: {sum(counts.values())} images in {len(counts)} classes")
        if args.pairs:
            from dsmd.data.pair_subsets import write_pair_subset

            for manifest in sorted(Path(args.out).glob("manifest*.jsonl")):
                if "_pairs_" in manifest.stem:
                    continue
                for fraction in args.pairs:
                    made = write_pair_subset(manifest, fraction)
                    print(f"{made['manifest']}: {made['pairs']} training pairs, {made['rest']} images to the pools")
    elif args.command == "sweep":
        _sweep(args, progress)
    elif args.command == "report":
        from dsmd.reports.run_report import report_run

        plots = report_run(args.run, measure=not args.no_measure, device=args.device)
        print(f"{Path(args.run) / 'report.md'}: " + ", ".join(str(p) for p in plots))
    elif args.command == "efficiency":
        _efficiency(args)
    elif args.command == "zero-shot":
        _zero_shot(args, progress)
    elif args.command == "plot-space":
        _plot_space(args, progress)
    return 0


def _after_stop(argv: list[str] | None) -> str:
    """What a command stopped by a signal keeps, for its line (commands that say it themselves: none)."""
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    if words and words[0] in ("extract", "index"):
        return "; the chunks finished so far are kept, and the same command continues from them"
    return ""


def main(argv: list[str] | None = None) -> None:
    from dsmd.runtime.files import os_error
    from dsmd.runtime.signals import Stopped, Terminated, signal_of, sigterm_raises, stopped_word

    try:
        with sigterm_raises():  # SIGTERM unwinds like Ctrl-C: files being written are dropped
            code = run(argv)
    except DsmdError as exc:
        if exc.report:  # (False on the other ranks of a torchrun job whose rank 0 prints it)
            print(f"dsmd: {'' if isinstance(exc, Stopped) else 'error: '}{' '.join(str(exc).split())}", file=sys.stderr)
        code = exc.exit_code
    except OSError as exc:  # a full disk, a read-only folder: the environment, not a bug
        print(f"dsmd: error: {os_error(exc)}", file=sys.stderr)
        code = 2
    except (KeyboardInterrupt, Terminated) as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun (which passes signals to every rank), rank 0 says it
            print(f"dsmd: {stopped_word(signal_of(exc))}{_after_stop(argv)}", file=sys.stderr)
        code = 128 + signal_of(exc)
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
