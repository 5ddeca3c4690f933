"""Run the teacher once over a dataset and write its features into a feature store.

Extraction goes into ``STORE.partial/``, split by split, and within a split in chunks of
:data:`CHUNK_SIZE` images or captions::

    STORE.partial/pending.json                       the manifest being built (+ chunk size)
    STORE.partial/chunks/SPLIT/image-00003.safetensors   raw features of images 3C .. 4C-1
    STORE.partial/chunks/SPLIT/text-00000.safetensors    raw features of captions 0 .. C-1
    STORE.partial/chunks/SPLIT/view1-00000.safetensors   view 1 of images 0 .. C-1
    STORE.partial/SPLIT.safetensors                  a finished split (its chunks deleted), or
    STORE.partial/SPLIT-00000-of-0000N.safetensors   its shards (``store_shard_rows``)
    STORE.partial/SPLIT.files.json                   written last: the split's file records

Pools of unpaired images and captions (``data.unpaired_images`` / ``data.unpaired_texts``) are
encoded the same way, as the tables ``unpaired_image`` / ``unpaired_text`` after the splits; a
finished store that lacks only some of the config's pools is extended with them
(:mod:`dsmd.extraction.unpaired_tables`).

Each chunk is written atomically, so an interrupted extraction (with the same teacher and
data) resumes at the first missing chunk. Batches start at chunk boundaries, so a chunk's
features do not depend on which chunks ran before it, and a resumed extraction writes a store
byte-identical to an uninterrupted one. The folder is renamed to ``STORE`` only when every
split is there.

Several processes (``torchrun --nproc_per_node N -m dsmd extract ...``, also over several
nodes sharing the store's file system): the chunks of all unfinished splits, numbered in
order (split, then ``image``, ``text``, ``view0`` ..., then chunk), are dealt out round-robin,
chunk ``t`` to rank ``t % WORLD_SIZE``; each rank runs the teacher on ``cuda:LOCAL_RANK``
(with CUDA; else the CPU) and saves its chunks. After a barrier rank 0 merges the chunks into
the store and writes the one manifest while the other ranks wait, then all return the store.
Processes talk only through barriers (gloo). A killed rank stops the whole run (torchrun);
running the same command again (with any number of processes) resumes from the chunks saved.

One writer per store: an extraction that will write (no finished store yet, or ``--overwrite``)
holds the lock of ``STORE`` (:mod:`dsmd.runtime.lock`, taken by rank 0 for all ranks and nodes)
from before it touches ``STORE.partial/`` until the store is in place; a second one is refused at
once and changes nothing. One that finds the store complete only reads it and takes no lock, so
runs and sweeps reusing a store never wait. Ctrl-C and SIGTERM stop it at once: what is on disk is
always whole chunks, and the same command continues from them (:mod:`dsmd.runtime.signals`).
"""

from __future__ import annotations

import datetime
import json
import shutil
import time
from pathlib import Path

import torch

from dsmd.config import RunConfig, config_to_dict
from dsmd.data.datasets import SPLITS, CaptionedImages, load_dataset
from dsmd.errors import DsmdError
from dsmd.extraction.chunks import (
    CHUNK_SIZE,
    _Chunks,
    _encode_images,
    _encode_texts,
    _spans,
    teacher_features,
)
from dsmd.extraction.unpaired_tables import drop_stale_pools, lacks_pools, pool_records, pool_tables, seed_from_store
from dsmd.runtime.distributed import Distributed, init_distributed
from dsmd.runtime.files import check_writable, write_json_atomic
from dsmd.runtime.lock import FolderInUse, exclusive_folder
from dsmd.store import FeatureStore, StoreWriter
from dsmd.store.manifest import FORMAT_VERSION, MANIFEST, describe_mismatch, pools_mismatch, read_manifest
from dsmd.teachers import Teacher, build_teacher

# Ranks wait at barriers while the others finish their chunks (and while rank 0 merges a large
# store); torchrun tears the group down if a rank dies, so the wait may be long.
BARRIER_TIMEOUT_S = int(datetime.timedelta(hours=48).total_seconds())


def _expected_manifest(
    cfg: RunConfig, teacher: Teacher, dataset: dict[str, CaptionedImages], pools: dict[str, CaptionedImages]
) -> dict:
    identity = dict(teacher.identity())
    identity["source"] = cfg.teacher.name_or_path
    manifest = {
        "format_version": FORMAT_VERSION,
        "teacher": identity,
        "normalized": cfg.teacher.normalize,
        "dtype": cfg.store_dtype,
        "dim": teacher.dim,
        "views": {"train": cfg.store_views},
        "data": config_to_dict(cfg.data),
        "splits": {
            split: {"fingerprint": d.fingerprint(), "num_images": d.num_images, "num_captions": len(d)}
            for split, d in dataset.items()
        },
    }
    if pools:
        manifest["unpaired"] = pool_records(pools)
    return manifest


def _imported_store(cfg: RunConfig, out: Path, log) -> FeatureStore:
    """``teacher.kind=imported`` has no model to run: the store must already be there."""
    if (out / MANIFEST).is_file():
        store = FeatureStore.open(out)
        store.check_teacher(cfg.teacher.kind, cfg.teacher.name_or_path)
        dataset = load_dataset(cfg.data)
        for split in store.manifest["splits"]:
            store.check_dataset(split, dataset[split].fingerprint())
        log(f"feature store {out} holds the imported features; nothing to extract")
        return store
    raise DsmdError(
        f"teacher.kind=imported has no model to run, and there is no feature store at {out}. "
        "Build it with `dsmd import-features --config CONFIG teacher.name_or_path=FEATURES`."
    )


def _streams(views: int) -> list[str]:
    return ["image", "text", *(f"view{v}" for v in range(views))]


def _chunk_tasks(
    dataset: dict[str, CaptionedImages], splits: list[str], views: dict[str, int], chunk_size: int
) -> list[tuple[str, str, int]]:
    """Every chunk of ``splits``, in the order dealt out to ranks: ``(split, stream, k)``."""
    tasks = []
    for split in splits:
        data = dataset[split]
        for stream in _streams(views[split]):
            rows = len(data) if stream == "text" else data.num_images
            tasks += [(split, stream, k) for k in range(len(_spans(rows, chunk_size)))]
    return tasks


def _compute_share(
    cfg: RunConfig,
    teacher: Teacher,
    dataset: dict[str, CaptionedImages],
    partial: Path,
    tasks: list[tuple[str, str, int]],
    device: torch.device,
    chunk_size: int,
    progress: bool,
) -> None:
    """Compute and save the chunks ``tasks`` (those not saved yet) of this rank."""
    for split, stream, _ in dict.fromkeys((s, st, 0) for s, st, _ in tasks):
        ks = [k for s, st, k in tasks if (s, st) == (split, stream)]
        chunks = _Chunks(partial / "chunks" / split, stream)
        data = dataset[split]
        if stream == "text":
            _encode_texts(
                teacher, data, chunks, cfg.teacher.batch_size, chunk_size, f"{split} captions", progress, only=ks
            )
        else:
            view = None if stream == "image" else int(stream[len("view") :])
            _encode_images(
                teacher,
                data,
                chunks,
                device,
                cfg.teacher.batch_size,
                cfg.data.num_workers,
                chunk_size,
                view,
                f"{split} {stream}",
                progress,
                only=ks,
            )


def extract(
    cfg: RunConfig, overwrite: bool = False, progress: bool = True, log=print, overwrite_hint: str | None = None
) -> FeatureStore:
    """Build (or reuse) the feature store ``cfg.store`` for ``cfg.data`` with ``cfg.teacher``.

    A complete store that matches the teacher and data is reused; one that does not is refused
    unless ``overwrite`` (then it is replaced once the new one is complete). An interrupted
    extraction resumes from its last finished chunk. Under ``torchrun`` (``WORLD_SIZE`` > 1)
    the processes share the chunks and rank 0 writes the store (see the module docstring);
    every rank returns it.

    Args:
        overwrite_hint: how the caller's user replaces a store built differently (the CLI:
            "Pass --overwrite ..."); the default names the folder to delete and the command.

    Raises:
        DsmdError: the store exists for another teacher or dataset (and ``overwrite`` is off).
        FolderInUse: another process is writing the store (a :class:`DsmdError`).
    """
    out = Path(cfg.store)
    if cfg.teacher.kind == "imported":
        return _imported_store(cfg, out, log)
    # (a finished store is reused as it is, even read-only; one that lacks a pool is extended)
    writes = overwrite or not (out / MANIFEST).is_file() or lacks_pools(cfg, out)
    if writes:
        check_writable(out.parent, "store")
    ctx = init_distributed(cfg.teacher.device, "gloo", BARRIER_TIMEOUT_S)
    ok = False
    try:
        with exclusive_folder(out, "store", ctx, needed=writes):  # before STORE.partial is touched
            store = _extract_or_clean(cfg, out, ctx, overwrite, progress, log, overwrite_hint, owns_partial=writes)
        ok = True
        return store
    except FolderInUse:
        ok = True  # every rank was refused together
        raise
    finally:
        ctx.shutdown(clean=ok)


def _extract_or_clean(
    cfg: RunConfig,
    out: Path,
    ctx: Distributed,
    overwrite: bool,
    progress: bool,
    log,
    overwrite_hint: str | None,
    owns_partial: bool,
) -> FeatureStore:
    """:func:`_extract`, removing after a user error a ``.partial`` folder left empty (when it holds the lock)."""
    try:
        return _extract(
            cfg,
            out,
            ctx,
            overwrite,
            progress if ctx.is_main else False,
            log if ctx.is_main else (lambda *_: None),
            overwrite_hint,
        )
    except DsmdError:
        if ctx.is_main and owns_partial:
            _drop_empty_partial(Path(str(out) + ".partial"))
        raise


def _drop_empty_partial(partial: Path) -> None:
    """After an error, remove a ``.partial`` folder that holds no finished chunk: there is
    nothing to resume from, and a user error should leave nothing behind."""
    if partial.is_dir() and not any(partial.rglob("*.safetensors")):
        shutil.rmtree(partial, ignore_errors=True)


def _existing(
    out: Path, expected: dict, cfg: RunConfig, overwrite: bool, log, overwrite_hint: str | None
) -> tuple[FeatureStore | None, dict | None]:
    """``(the store at out, None)`` when it is this one; ``(None, its manifest)`` when it is this
    one but lacks some of the pools (to extend); ``(None, None)`` when there is none or it will be
    replaced."""
    if not (out / MANIFEST).is_file():
        return None, None
    found = read_manifest(out / MANIFEST, f"Delete {out} and run `dsmd extract` again.")
    missing, different = pools_mismatch(found, expected.get("unpaired", {}))
    diff = describe_mismatch(found, expected) + different
    if not diff and missing and not overwrite:
        return None, found
    if not diff and not missing:
        log(f"feature store {out} is up to date; nothing to extract")
        if (found.get("shard_rows") or None) != (cfg.store_shard_rows or None):
            log(f"(it was written with store_shard_rows={found.get('shard_rows')}; the setting applies to new stores)")
        return FeatureStore.open(out), None
    if not overwrite:
        hint = overwrite_hint or (
            f"To rebuild it, delete {out} (or run `dsmd extract --overwrite` with this "
            "config); or choose another store=PATH."
        )
        raise DsmdError(f"feature store {out} exists but was built differently ({'; '.join(diff)[:400]}). {hint}")
    return None, None


def _start_partial(writer: StoreWriter, expected: dict) -> None:
    """Keep what an interrupted extraction of this store saved; drop anything else."""
    pending_file = writer.partial / "pending.json"
    pending = json.loads(pending_file.read_text()) if pending_file.is_file() else {}
    if describe_mismatch(pending, expected):
        shutil.rmtree(writer.partial)
        writer.partial.mkdir(parents=True)
    elif pending.get("chunk_size") != CHUNK_SIZE and (writer.partial / "chunks").exists():
        shutil.rmtree(writer.partial / "chunks")  # chunks of another size do not line up
    else:
        drop_stale_pools(writer.partial, pending, expected)
    write_json_atomic(pending_file, {**expected, "chunk_size": CHUNK_SIZE})


def _extract(
    cfg: RunConfig, out: Path, ctx: Distributed, overwrite: bool, progress: bool, log, overwrite_hint: str | None
) -> FeatureStore:
    dataset = load_dataset(cfg.data)
    pools = pool_tables(cfg, dataset)
    t0 = time.perf_counter()
    teacher = build_teacher(cfg.teacher, ctx.device)
    expected = _expected_manifest(cfg, teacher, dataset, pools)
    store, extend = _existing(out, expected, cfg, overwrite, log, overwrite_hint)
    if store is not None:
        return store
    if extend is not None:  # keep the pools the store has besides the config's
        expected["unpaired"] = {**extend.get("unpaired", {}), **expected["unpaired"]}
    names = [*SPLITS, *expected.get("unpaired", {})]
    ctx.barrier("looking at the store folders")  # before rank 0 changes them
    writer = StoreWriter(out, fresh=False) if ctx.is_main else None
    if writer is not None:
        _start_partial(writer, expected)
        if extend is not None:
            seed_from_store(out, writer.partial, log)
    ctx.barrier("preparing the store folder")
    partial = Path(str(out) + ".partial")
    tables = {**dataset, **pools}
    views = {name: cfg.store_views if name == "train" else 0 for name in names}
    todo = _unfinished(partial, names, log)
    if ctx.world_size > 1:
        tasks = _chunk_tasks(tables, todo, views, CHUNK_SIZE)
        mine = tasks[ctx.rank :: ctx.world_size]
        log(f"{ctx.world_size} processes share {len(tasks)} chunks")
        t_share = time.perf_counter()
        _compute_share(cfg, teacher, tables, partial, mine, ctx.device, CHUNK_SIZE, progress)
        log(
            f"rank 0 finished its {len(mine)} chunks in {time.perf_counter() - t_share:.1f} s; waiting for the other ranks"
        )
        ctx.barrier("waiting for every rank's chunks")
    if writer is not None:
        for split in todo:
            _finish_split(cfg, teacher, tables[split], split, views[split], writer, ctx, progress, log)
        shutil.rmtree(partial / "chunks", ignore_errors=True)
        shard_rows = extend.get("shard_rows") if extend is not None else cfg.store_shard_rows or None
        writer.finish(
            {**expected, "shard_rows": shard_rows}, names, replace=overwrite or extend is not None, started=t0
        )
    ctx.barrier("waiting for rank 0 to write the store")
    return FeatureStore.open(out)


def _unfinished(partial: Path, names: list[str], log) -> list[str]:
    """The splits and pool tables (``names``) an interrupted extraction did not finish (saying what it resumes)."""
    todo = []
    for split in names:
        if (partial / f"{split}.files.json").is_file():
            log(f"{split}: already extracted (resuming)")
            continue
        todo.append(split)
        chunk_folder = partial / "chunks" / split
        if chunk_folder.is_dir() and any(chunk_folder.glob("*.safetensors")):
            log(f"{split}: resuming from {len(list(chunk_folder.glob('*.safetensors')))} finished chunks")
    return todo


def _finish_split(
    cfg: RunConfig,
    teacher: Teacher,
    data: CaptionedImages,
    split: str,
    views: int,
    writer: StoreWriter,
    ctx: Distributed,
    progress: bool,
    log,
) -> None:
    """Encode what is missing of ``split`` (all of it alone), assemble it and write its files."""
    t_split = time.perf_counter()
    chunk_folder = writer.partial / "chunks" / split
    feats = teacher_features(
        teacher,
        data,
        cfg.teacher.batch_size,
        cfg.teacher.normalize,
        ctx.device,
        cfg.data.num_workers,
        progress,
        views=views,
        chunk_folder=chunk_folder,
        chunk_size=CHUNK_SIZE,
    )
    writer.write_split(split, feats, cfg.store_dtype, cfg.store_shard_rows)
    shutil.rmtree(chunk_folder, ignore_errors=True)
    log(f"{split}: {data.num_images} images, {len(data)} captions ({time.perf_counter() - t_split:.1f} s)")
