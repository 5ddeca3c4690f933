"""Rank 0's part of ``dsmd index``: the complete index from the old one and every chunk.

The chunks (``INDEX.partial/chunk-KKKKK.npz``: features ``(M, D)``, which of the chunk's items
they are, why the others could not be read) are read in order, whichever rank encoded them,
into one float32 array ``(N, D)`` that follows the old index's vectors; the index is written
into ``INDEX.partial/index`` (:func:`dsmd.search.index.write_index`) and swapped into place.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dsmd.errors import DsmdError
from dsmd.search.engine import RECALL_QUERIES
from dsmd.search.index import SKIPPED, VECTORS, Index, search_kind, swap_into_place, write_index
from dsmd.search.kinds import RECALL_TARGET, IndexOptions
from dsmd.search.shards import shard_mark

Listing = tuple[dict[str, Any], list[dict[str, Any]]]


def _read_chunks(files: list[Path], new: list[dict[str, Any]], size: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The items the chunks encoded, in order (one row each), and the lines of those they could not read."""
    added, skipped = [], []
    for k, file in enumerate(files):
        with np.load(file, allow_pickle=False) as chunk:
            added += [new[k * size + int(i)] for i in chunk["ok"]]
            skipped += [str(line) for line in chunk["failed"]]
    return added, skipped


def _gather_vectors(old: np.ndarray | None, files: list[Path], rows: int, dim: int) -> np.ndarray:
    """``(N, D)`` float32: the index's vectors, then every chunk's, filled into one array."""
    vectors = np.empty((rows + (0 if old is None else len(old)), dim), np.float32)
    at = 0
    if old is not None:
        for start in range(0, len(old), 100_000):
            block = old[start : start + 100_000]
            vectors[at : at + len(block)] = block
            at += len(block)
    for file in files:
        with np.load(file, allow_pickle=False) as chunk:
            vectors[at : at + len(chunk["vectors"])] = chunk["vectors"]
            at += len(chunk["vectors"])
    return vectors


def assemble(
    out: Path,
    partial: Path,
    files: list[Path],
    new: list[dict[str, Any]],
    existing: Listing | None,
    kind: str,
    model: dict[str, Any],
    options: IndexOptions,
    log,
    shard: tuple[int, int] | None,
    chunk_size: int,
) -> Index:
    """Rank 0: the complete index from the old one and every chunk (of ``chunk_size`` items of
    ``new``), swapped into ``out``."""
    key = "path" if kind == "images" else "text"
    added, new_skipped = _read_chunks(files, new, chunk_size)
    old = np.load(out / VECTORS, mmap_mode="r", allow_pickle=False) if existing else None
    retried = {item[key] for item in new}  # images skipped before are tried again: they may be fixed now
    before = (out / SKIPPED).read_text().splitlines() if existing and (out / SKIPPED).is_file() else []
    skipped = [line for line in before if line.split("\t", 1)[0] not in retried] + new_skipped
    kept = [{"id": i, key: item[key]} for i, item in enumerate([*(existing[1] if existing else []), *added])]
    if not kept:
        shutil.rmtree(partial, ignore_errors=True)
        raise DsmdError(
            f"none of the {len(new)} {kind} could be read (e.g. {skipped[0] if skipped else '?'}); no index written."
        )
    if old is not None and len(old) != len(existing[1]):
        raise DsmdError(f"index {out}: its items and vectors disagree. Delete {out} and build it again.")
    vectors = _gather_vectors(old, files, len(added), model["dim"])
    requested = options.kind or (search_kind(existing[0]) if existing else "auto")
    meta = {"kind": kind, "model": model, **({"shard": shard_mark(shard)} if shard else {})}
    about = write_index(partial / "index", meta, kept, vectors, skipped, requested, options)
    del vectors, old
    swap_into_place(partial / "index", out)
    shutil.rmtree(partial, ignore_errors=True)
    log(
        f"index {out}: {len(added)} new {kind} added, {len(new_skipped)} skipped"
        + (f" (unreadable, listed in {out / SKIPPED})" if new_skipped else "")
        + f"; {len(kept)} in all"
    )
    index = Index.open(out)
    _log_recall(index, about, log)
    return index


def _log_recall(index: Index, about: dict[str, Any], log) -> None:
    """Say which index answers, its measured recall, and what to do when it falls short."""
    if about["kind"] == "flat":
        log(f"search: {index.describe_search()}")
        return
    log(
        f"search: {index.describe_search()}; recall@10 against exact search for {about['recall_queries']} "
        "queries (items pushed off the gallery by noise, as queries of the other modality are)"
    )
    if about["recall_at_10"] < RECALL_TARGET and len(index) > RECALL_QUERIES:
        fix = "a larger --pq-m or --nprobe" if about["kind"] == "ivfpq" else "--index-kind flat"
        log(f"warning: recall@10 {about['recall_at_10']:.3f} is below {RECALL_TARGET}: rebuild with {fix}.")
