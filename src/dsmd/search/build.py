"""``dsmd index``: build or extend an index from images, captions, or a store's teacher features.

One writer per index: each function holds the lock of ``--out`` (:mod:`dsmd.runtime.lock`) from
its start, before anything is read or written, so a second ``dsmd index`` on the same folder is
refused at once and changes nothing; ``dsmd search`` and ``dsmd serve`` read without a lock.
Ctrl-C and SIGTERM stop a build at once: the chunks saved so far are whole, and the same command
continues from them.

Several processes (``torchrun --nproc_per_node N -m dsmd index ...``, also on several nodes that
see the same file system): every rank lists the items and checks that rank 0 listed the same;
chunk ``k`` of the items to encode goes to rank ``k % N``, which encodes it on its device
(``cuda:LOCAL_RANK`` with ``--device cuda``) and saves it in ``INDEX.partial/``; after a barrier
rank 0 assembles the index from all chunks in order, so it is the one-process index (the same
items in the same order, features up to float rounding). A killed rank stops the job (torchrun);
the same command, with any number of processes, resumes from the chunks saved.

Which faiss index is built (``flat``, ``hnsw``, ``ivfpq``, or ``auto`` by count) and with which
parameters: :mod:`dsmd.search.kinds`; shards of one gallery (``--shard K/N``):
:mod:`dsmd.search.shards`.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

from dsmd.config import DataConfig, from_dict
from dsmd.data.datasets import load_split
from dsmd.errors import DsmdError
from dsmd.inference import Encoder
from dsmd.runtime.distributed import Distributed, init_distributed
from dsmd.runtime.files import check_writable, write_json_atomic
from dsmd.runtime.lock import exclusive_folder
from dsmd.search.assemble import Listing, assemble
from dsmd.search.index import CHUNK, META, Index, read_listing, recover, search_kind
from dsmd.search.kinds import IndexOptions, choose_kind, ivfpq_params
from dsmd.search.listing import list_images, list_texts
from dsmd.search.shards import shard_mark, shard_of, shard_words
from dsmd.store import FeatureStore
from dsmd.store.manifest import teacher_space

Encode = Callable[[list[dict[str, Any]]], tuple[np.ndarray, list[int], list[str]]]
T = TypeVar("T")
# Ranks wait at barriers while the others finish their chunks and while rank 0 trains and writes
# a large index; torchrun ends the job if a rank dies, so the wait may be long.
BARRIER_TIMEOUT_S = int(datetime.timedelta(hours=48).total_seconds())


@contextlib.contextmanager
def index_processes(device: str = "cpu") -> Iterator[Distributed]:
    """This process's place in a ``torchrun`` job (gloo: ranks meet only at barriers), or alone.

    ``ctx.device`` is where this rank encodes: ``cuda:LOCAL_RANK`` under torchrun with ``cuda``.
    """
    ctx = init_distributed(device, "gloo", BARRIER_TIMEOUT_S)
    ok = False
    try:
        yield ctx
        ok = True
    finally:
        ctx.shutdown(clean=ok)


def _on_every_rank(ctx: Distributed, what: str, fn: Callable[[], T]) -> T:
    """``fn()`` on every rank; a DsmdError on rank 0 stops every rank, and only rank 0 prints it."""
    try:
        result, failure = fn(), None
    except DsmdError as exc:
        result, failure = None, exc
    message = ctx.broadcast_object(None if failure is None else str(failure), what)
    if message is not None and not ctx.is_main:
        error = DsmdError(message)
        error.report = False
        raise error
    if failure is not None:
        raise failure
    return result


def _existing(out: Path, kind: str, model: dict[str, Any], shard: tuple[int, int] | None) -> Listing | None:
    """The meta and items of the index at ``out`` when there is one that these items may join."""
    if not (out / META).is_file():
        if out.exists() and any(out.iterdir()):
            raise DsmdError(f"{out} exists and is not an index. Choose another --out.")
        return None
    meta, items = read_listing(out)
    if meta["kind"] != kind:
        raise DsmdError(f"index {out} holds {meta['kind']}, not {kind}. Choose another --out.")
    old = meta["model"]
    if (old.get("model_id"), old.get("space")) != (model.get("model_id"), model.get("space")):
        raise DsmdError(
            f"index {out} was built by {old.get('name')} (weights {old.get('model_id')}); adding items "
            f"encoded by {model.get('name')} (weights {model.get('model_id')}) would mix two models' "
            "features. Use the same model, or another --out."
        )
    if meta.get("shard") != shard_mark(shard):
        raise DsmdError(
            f"index {out} is {shard_words(meta.get('shard'))}; this build is {shard_words(shard_mark(shard))}. "
            "Give the same --shard, or another --out."
        )
    return meta, items


def _what_to_add(
    out: Path,
    kind: str,
    model: dict[str, Any],
    items: list[dict[str, Any]],
    options: IndexOptions,
    shard: tuple[int, int] | None,
) -> tuple[Listing | None, list[dict[str, Any]]]:
    """The index there (if any) and the items (of this shard) not in it yet; the index kind checked
    against their count before anything is encoded."""
    key = "path" if kind == "images" else "text"
    existing = _existing(out, kind, model, shard)
    if shard:
        items = [item for item in items if shard_of(item[key], shard[1]) == shard[0]]
    seen = {item[key] for item in existing[1]} if existing else set()
    new = [item for item in items if item[key] not in seen]
    requested = options.kind or (search_kind(existing[0]) if existing else "auto")
    if new and choose_kind(requested, len(seen) + len(new)) == "ivfpq":
        ivfpq_params(len(seen) + len(new), model["dim"], options)  # (raises for too few items, a bad --pq-m)
    return existing, new


def _prepare_partial(partial: Path, new: list[dict[str, Any]]) -> str:
    """Keep the chunks of an interrupted build of the same items; returns the items' hash."""
    plan = {"items": hashlib.sha256(json.dumps(new).encode()).hexdigest(), "chunk": CHUNK}
    plan_file = partial / "plan.json"
    if partial.exists() and (not plan_file.is_file() or json.loads(plan_file.read_text()) != plan):
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan_file, plan)
    return plan["items"]


def _save_chunk(file: Path, vectors: np.ndarray, ok: list[int], failed: list[str]) -> None:
    """One chunk's features ``(M, D)``, the indices of its readable items and why the others failed."""
    tmp = file.with_name(file.stem + ".tmp.npz")
    np.savez(tmp, vectors=vectors, ok=np.array(ok, dtype=np.int64), failed=np.array(failed, dtype=str))
    tmp.rename(file)


def _chunks(
    partial: Path, new: list[dict[str, Any]], encode: Encode, progress: bool, what: str, rank: int = 0, world: int = 1
) -> list[Path]:
    """Encode this rank's chunks of ``new`` (chunk ``k`` is rank ``k % world``'s) not saved yet.

    Returns:
        Every chunk's file, this rank's and the others', in order.
    """
    files = [partial / f"chunk-{k:05d}.npz" for k in range(-(-len(new) // CHUNK))]
    mine = [k for k in range(rank, len(files), world)]
    total = sum(len(new[k * CHUNK : (k + 1) * CHUNK]) for k in mine)
    with tqdm(total=total, desc=f"indexing {what}", unit=what[:-1], disable=not progress, leave=False) as bar:
        for k in mine:
            chunk = new[k * CHUNK : (k + 1) * CHUNK]
            if not files[k].is_file():
                _save_chunk(files[k], *encode(chunk))
            bar.update(len(chunk))
    return files


def _build(
    out: Path,
    kind: str,
    model: dict[str, Any],
    items: list[dict[str, Any]],
    encode: Encode,
    options: IndexOptions,
    progress: bool,
    log,
    ctx: Distributed,
    shard: tuple[int, int] | None = None,
) -> Index | None:
    """Encode the items not in the index yet (shared by the ranks) and, on rank 0, write the index.

    Returns:
        The index on rank 0; None on the other ranks.
    """
    out = Path(out)
    if ctx.is_main:
        recover(out)
    ctx.barrier("looking at the index folder")  # (after rank 0 finished an interrupted swap)
    existing, new = _on_every_rank(
        ctx, "reading the index", lambda: _what_to_add(out, kind, model, items, options, shard)
    )
    if existing and not new and options == IndexOptions():
        log(f"index {out}: nothing new to add; {len(existing[1])} {kind} in all")
        return Index.open(out) if ctx.is_main else None
    partial = Path(str(out) + ".partial")
    plan = _prepare_partial(partial, new) if ctx.is_main else hashlib.sha256(json.dumps(new).encode()).hexdigest()
    if ctx.broadcast_object(plan, "comparing the ranks' items") != plan:
        raise DsmdError(
            f"rank {ctx.rank} listed other {kind} than rank 0: every rank must see the same files. "
            "Run again once the folders stop changing (and are the same on every node)."
        )
    files = _chunks(partial, new, encode, progress, kind, ctx.rank, ctx.world_size)
    if ctx.world_size > 1:
        log(f"rank 0 encoded its share of {len(files)} chunks; waiting for the other ranks")
    ctx.barrier("waiting for every rank's chunks")
    index = (
        assemble(out, partial, files, new, existing, kind, model, options, log, shard, CHUNK) if ctx.is_main else None
    )
    ctx.barrier("waiting for rank 0 to write the index")
    return index


@contextlib.contextmanager
def _writing(out: str | Path, ctx: Distributed) -> Iterator[None]:
    """Hold the lock of the index folder ``out`` (checked writable first, for a clear message);
    under torchrun rank 0 holds it for every rank."""
    if ctx.is_main:
        check_writable(Path(out).parent, "--out")
    with exclusive_folder(out, "--out", ctx):
        yield


def _options(options: IndexOptions | None, approximate: bool) -> IndexOptions:
    if options is not None and approximate and options.kind not in (None, "hnsw"):
        raise DsmdError(f"--approximate means --index-kind hnsw; it cannot go with --index-kind {options.kind}.")
    if approximate:
        return IndexOptions(**{**(options.__dict__ if options else {}), "kind": "hnsw"})
    return options or IndexOptions()


def index_images(
    out: str | Path,
    encoder: Encoder,
    sources: list[str],
    approximate: bool = False,
    progress: bool = True,
    log=print,
    options: IndexOptions | None = None,
    ctx: Distributed | None = None,
    shard: tuple[int, int] | None = None,
) -> Index | None:
    """Index every image under ``sources`` (folders, image files, or lists of images) with ``encoder``.

    Unreadable images are skipped and named in ``skipped.txt``; images already in the index are
    not encoded again.

    Args:
        approximate: an HNSW index (``options.kind = "hnsw"``).
        options: which faiss index, with which parameters (:mod:`dsmd.search.kinds`).
        ctx: this process's place in a ``torchrun`` job (:func:`index_processes`); None: alone.
        shard: ``(K, N)``: only the items of shard K of N (:mod:`dsmd.search.shards`).

    Returns:
        The index (None on the ranks other than 0 of a torchrun job).
    """
    ctx, options = ctx or Distributed(), _options(options, approximate)
    log = log if ctx.is_main else (lambda *_: None)
    with _writing(out, ctx):
        items = _on_every_rank(ctx, "listing the images", lambda: [{"path": p} for p in list_images(sources)])

        def encode(chunk):
            return encoder.encode_image_files([item["path"] for item in chunk])

        return _build(
            Path(out), "images", encoder.describe(), items, encode, options, progress and ctx.is_main, log, ctx, shard
        )


def index_texts(
    out: str | Path,
    encoder: Encoder,
    file: str,
    approximate: bool = False,
    progress: bool = True,
    log=print,
    options: IndexOptions | None = None,
    ctx: Distributed | None = None,
    shard: tuple[int, int] | None = None,
) -> Index | None:
    """Index the captions of ``file`` (one a line) with ``encoder`` (arguments as :func:`index_images`)."""
    ctx, options = ctx or Distributed(), _options(options, approximate)
    log = log if ctx.is_main else (lambda *_: None)
    with _writing(out, ctx):
        items = _on_every_rank(ctx, "listing the captions", lambda: [{"text": t} for t in list_texts(file)])

        def encode(chunk):
            return encoder.encode_texts([item["text"] for item in chunk], progress=False), list(range(len(chunk))), []

        return _build(
            Path(out), "texts", encoder.describe(), items, encode, options, progress and ctx.is_main, log, ctx, shard
        )


def index_teacher_store(
    out: str | Path,
    store_path: str,
    split: str,
    approximate: bool = False,
    progress: bool = True,
    log=print,
    options: IndexOptions | None = None,
    ctx: Distributed | None = None,
    shard: tuple[int, int] | None = None,
) -> Index | None:
    """An image gallery of the teacher's stored features of ``split``: nothing is encoded.

    The images are listed from the store's own data config (they must still be where they
    were); the store is verified first. Other arguments as :func:`index_images`.
    """
    ctx, options = ctx or Distributed(), _options(options, approximate)
    log = log if ctx.is_main else (lambda *_: None)
    with _writing(out, ctx):
        model, items, encode = _on_every_rank(
            ctx, "reading the feature store", lambda: _teacher_gallery(store_path, split, progress and ctx.is_main)
        )
        return _build(Path(out), "images", model, items, encode, options, progress and ctx.is_main, log, ctx, shard)


def _teacher_gallery(store_path: str, split: str, progress: bool) -> tuple[dict[str, Any], list[dict], Encode]:
    """The model record, the items and an "encoder" (a look-up) of a store's split."""
    store = FeatureStore.open(store_path)
    data_cfg = from_dict(DataConfig, store.manifest.get("data") or {}, "data.")
    data = load_split(data_cfg, split)
    store.check_dataset(split, data.fingerprint())
    store.verify([split], progress=progress)
    features = store.split(split).image.numpy()
    teacher = store.teacher
    model = {
        "name": f"teacher {teacher.get('name') or teacher.get('kind')} (store {store.path})",
        "model_id": str(teacher.get("weights_sha256", ""))[:12],
        "space": teacher_space(teacher),
        "dim": store.dim,
        "normalized": bool(store.manifest["normalized"]),
        "store": str(store.path),
        "split": split,
    }
    rows = {path: i for i, path in enumerate(data.image_paths)}

    def encode(chunk):
        return features[[rows[item["path"]] for item in chunk]], list(range(len(chunk))), []

    return model, [{"path": path} for path in data.image_paths], encode
