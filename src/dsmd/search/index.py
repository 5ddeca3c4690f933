"""A search index: the features of a gallery of images or captions, and who they belong to.

::

    INDEX/meta.json      format version, what the items are (images / texts), the model that
                         encoded them (name, weights id, feature space, width) or the feature
                         store they came from, which faiss index answers and with which
                         parameters, its recall@10 measured when built, count, a fingerprint of
                         the items (paths with sizes and times), when it was built
    INDEX/items.jsonl    item i: {"id": i, "path": ...} or {"id": i, "text": ...}
    INDEX/vectors.npy    (N, D) features (kept, so adding items re-encodes nothing): float32, or
                         float16 for an ivfpq index, which re-ranks its candidates with them
    INDEX/index.faiss    a faiss index over them (:mod:`dsmd.search.kinds`): exact inner product
                         (IndexFlatIP), HNSW (IndexHNSWFlat) or IVF-PQ (IndexIVFPQ), all inner product
    INDEX/skipped.txt    files that could not be read, with the reason

``meta.json`` records the size and sha256 of each of the other four files, and its own (of the
rest of its content, as canonical JSON): opening an index
checks their sizes, and hashes them the first time it is opened at a place
(:mod:`dsmd.runtime.checksums`), so a file damaged anywhere, the middle included, is one line
naming it; ``dsmd verify INDEX`` hashes them again and parses every item.

Format versions: flat and hnsw indexes are written as version 1 (readable by every dsmd that
reads indexes); ivfpq ones as version 2, since a reader must re-rank their candidates with
float16 vectors. This dsmd reads both.

Building happens in ``INDEX.partial/``: new items are encoded in chunks of :data:`CHUNK` saved
as they finish (an interrupted build resumes at the next chunk), then the complete index is
written there and swapped into place. Nothing read from an index runs code: JSON, ``.npy``
without pickle, and faiss's own binary format.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dsmd.errors import DsmdError
from dsmd.runtime.checksums import check_files, file_records, seal_holds, sealed, stamp_verified
from dsmd.runtime.files import write_json_atomic, write_text_atomic
from dsmd.search.engine import MAX_EF_SEARCH, QUERY_NOISE, RECALL_QUERIES, RowReader, Searcher, tune, tune_ivfpq
from dsmd.search.items import ItemFile
from dsmd.search.kinds import (
    HNSW_NEIGHBOURS,
    RERANK_FACTOR,
    RERANK_MIN,
    IndexOptions,
    build_faiss,
    choose_kind,
    describe,
    faiss_module,
    ivfpq_params,
    set_search_param,
)

INDEX_VERSION = 2  # the newest format this dsmd writes (ivfpq indexes); flat and hnsw ones are version 1
READABLE_VERSIONS = (1, 2)
META, ITEMS, VECTORS, FAISS, SKIPPED = "meta.json", "items.jsonl", "vectors.npy", "index.faiss", "skipped.txt"
CHUNK = 1024
HNSW_EF_START = 16


def fingerprint(items: list[dict[str, Any]]) -> str:
    """sha256 over the items: each path with its size and modification time, or each text."""
    h = hashlib.sha256()
    for item in items:
        if "path" in item:
            try:
                st = os.stat(item["path"])
                h.update(f"{item['path']}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{item['path']}\0missing\n".encode())
        else:
            h.update(f"{item['text']}\n".encode())
    return h.hexdigest()


def search_kind(meta: dict[str, Any]) -> str:
    """``flat``, ``hnsw`` or ``ivfpq``: which faiss index answers (indexes written before kinds: from ``approximate``)."""
    if "index" in meta:
        return meta["index"]["kind"]
    return "hnsw" if meta.get("approximate") else "flat"


def _fix(path: Path) -> str:
    return f"Build it again with `dsmd index ... --out {path}` (or delete {path})."


def read_meta(path: str | Path) -> dict[str, Any]:
    """``meta.json`` of the index at ``path``, checked.

    Raises:
        DsmdError: no index there, a corrupt file, a format this dsmd does not read.
    """
    path = Path(path)
    recover(path)
    if not (path / META).is_file():
        raise DsmdError(f"no index at {path}. Build one with `dsmd index --model MODEL --images FOLDER --out {path}`.")
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DsmdError(f"index {path}: {META} is damaged ({' '.join(str(exc).split())[:120]}). {_fix(path)}") from exc
    if isinstance(meta, dict) and ("files" in meta or "sha256" in meta) and not seal_holds(meta):
        raise DsmdError(f"index {path}: {META} is damaged (its sha256 differs from its content). {_fix(path)}")
    if not isinstance(meta, dict) or meta.get("version") not in READABLE_VERSIONS:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise DsmdError(
            f"index {path} has format {version!r}; this dsmd reads "
            f"{' and '.join(map(str, READABLE_VERSIONS))}. {_fix(path)}"
        )
    _check_meta(path, meta)
    return meta


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    """The fields of ``meta.json`` that reading relies on, with their types."""
    model = meta.get("model")
    bad = (
        "kind" if meta.get("kind") not in ("images", "texts") else
        "model" if not isinstance(model, dict) else
        "model.dim" if not isinstance(model.get("dim"), int) or model["dim"] < 1 else
        "model.space" if not isinstance(model.get("space"), str) else
        "count" if not isinstance(meta.get("count"), int) or meta["count"] < 0 else
        "files" if not isinstance(meta.get("files", {}), dict) else None
    )  # fmt: skip
    if bad is not None:
        raise DsmdError(
            f"index {path}: {META} is damaged (its field {bad} does not hold what dsmd wrote). {_fix(path)}"
        )


def check_index_files(path: str | Path, meta: dict[str, Any], force: bool = False) -> int:
    """Check the index's files against the sizes and sha256 that ``meta.json`` records.

    Returns the bytes hashed (0 when every file was stamped). An index written before dsmd
    recorded checksums has none to check (``dsmd verify`` parses it instead).

    Raises:
        DsmdError: a file missing, resized or changed, naming it and the fix.
    """
    path = Path(path)
    files = meta.get("files", {})
    if not all(isinstance(r, dict) for r in files.values()):
        raise DsmdError(
            f"index {path}: {META} is damaged (its field files does not hold what dsmd wrote). {_fix(path)}"
        )
    return check_files(path, files, f"index {path}", _fix(path), force=force)


def read_listing(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``meta.json`` and every item of the index at ``path`` (no vectors, no faiss: for a build)."""
    meta = read_meta(path)
    check_index_files(path, meta)
    if not (Path(path) / ITEMS).is_file():
        raise _corrupt(Path(path), FileNotFoundError(f"no {ITEMS}"))
    return meta, list(ItemFile(Path(path) / ITEMS, f"index {path}", _fix(Path(path))))


def verify_index(path: str | Path) -> str:
    """``dsmd verify INDEX``: hash every file again, parse every item, check the vectors are finite.

    Returns:
        One line saying what was checked.

    Raises:
        DsmdError: the first damage found.
    """
    path = Path(path)
    meta = read_meta(path)
    hashed = check_index_files(path, meta, force=True)
    index = Index.open(path)
    count = sum(1 for _ in index.items)
    for start in range(0, len(index.vectors), 100_000):
        if not np.isfinite(index.vectors[start : start + 100_000]).all():
            raise DsmdError(f"index {path}: {VECTORS} holds NaN or inf. {_fix(path)}")
    if "files" in meta:
        sums = f"{len(meta['files'])} files match their sha256 ({hashed / 1e6:.1f} MB hashed)"
    else:
        sums = "no checksums recorded (an older dsmd built it)"
    return f"index {path}: {sums}; {count} items parsed, vectors finite"


def _corrupt(path: Path, exc: Exception) -> DsmdError:
    return DsmdError(f"index {path} is incomplete or corrupt ({' '.join(str(exc).split())[:200]}). {_fix(path)}")


@dataclass
class Index:
    """An index folder, opened (see the module docstring).

    Attributes:
        items: ``{"id", "path" | "text"}`` each, read from ``items.jsonl`` when asked.
        vectors: ``(N, D)`` memory-mapped (float32; float16 for ``ivfpq``, whose searcher reads its
            candidates' rows from the same file with ``pread``).
        searcher: answers queries (:class:`dsmd.search.engine.Searcher`).
    """

    path: Path
    meta: dict[str, Any]
    items: ItemFile
    vectors: np.ndarray
    faiss_index: Any
    searcher: Searcher

    @property
    def kind(self) -> str:
        """``images`` or ``texts``."""
        return self.meta["kind"]

    @property
    def space(self) -> str:
        return self.meta["model"]["space"]

    @property
    def dim(self) -> int:
        return int(self.meta["model"]["dim"])

    @property
    def index_kind(self) -> str:
        """Which faiss index answers: ``flat`` (exact), ``hnsw`` or ``ivfpq``."""
        return search_kind(self.meta)

    @property
    def recall(self) -> float | None:
        """recall@10 against exact search, measured when built (1.0 for flat; None when not measured)."""
        if self.index_kind == "flat":
            return 1.0
        return self.meta.get("index", {}).get("recall_at_10")

    def describe_search(self) -> str:
        """One phrase: which index answers, and how exactly (for the command's output)."""
        return describe(self.index_kind, self.meta.get("index", {}).get("params", {}), self.recall)

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def open(cls, path: str | Path) -> Index:
        """Open an index folder, checking that its parts agree.

        Raises:
            DsmdError: no index there, a missing or corrupt file, or parts that disagree (an
                update was interrupted).
        """
        path = Path(path)
        meta = read_meta(path)
        check_index_files(path, meta)
        try:
            items = ItemFile(path / ITEMS, f"index {path}", _fix(path))
            if len(items):
                items[0], items[-1]  # noqa: B018 - readable at both ends (each is read when a query returns it)
            vectors = np.load(path / VECTORS, mmap_mode="r", allow_pickle=False)
            index = faiss_module().read_index(str(path / FAISS))
        except (OSError, ValueError, RuntimeError) as exc:
            raise _corrupt(path, exc) from exc
        counts = {len(items), vectors.shape[0], index.ntotal, meta.get("count")}
        if len(counts) != 1 or vectors.ndim != 2 or vectors.shape[1] != meta["model"]["dim"]:
            raise DsmdError(
                f"index {path}: its items ({len(items)}), vectors {tuple(vectors.shape)} and faiss index "
                f"({index.ntotal}) disagree. {_fix(path)}"
            )
        kind = search_kind(meta)
        params = meta.get("index", {}).get("params", {})
        set_search_param(index, kind, params.get("nprobe" if kind == "ivfpq" else "ef_search"))
        searcher = Searcher(
            index, kind, RowReader(vectors) if kind == "ivfpq" else None, params.get("rerank", RERANK_MIN)
        )
        return cls(path, meta, items, vectors, index, searcher)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items of each query ``(Q, D)``: scores and ids, ``(Q, min(k, N))`` each."""
        k = min(k, len(self))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        return self.searcher.search(queries, k)

    def label(self, i: int) -> str:
        item = self.items[i]
        return item.get("path", item.get("text", ""))

    def labels(self) -> Iterator[str]:
        """Every item's path or text, in order (streamed from the file)."""
        for item in self.items:
            yield item.get("path", item.get("text", ""))


def recover(path: Path) -> None:
    """Finish a swap that an interruption cut between its two renames."""
    old = Path(str(path) + ".old")
    if not path.exists() and (old / META).is_file():
        old.rename(path)


def _save_vectors(file: Path, vectors: np.ndarray, dtype: type) -> None:
    """``vectors (N, D)`` as a ``.npy`` of ``dtype``, converted in blocks (no second full copy)."""
    out = np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=vectors.shape)
    for start in range(0, len(vectors), 100_000):
        out[start : start + 100_000] = vectors[start : start + 100_000]
    out.flush()
    del out


def _faiss_and_params(
    folder: Path, vectors: np.ndarray, kind: str, options: IndexOptions
) -> tuple[Any, dict[str, Any], float]:
    """The faiss index of ``kind`` over ``vectors (N, D)``, its parameters (search ones tuned) and recall@10."""
    params: dict[str, Any] = ivfpq_params(len(vectors), vectors.shape[1], options) if kind == "ivfpq" else {}
    index = build_faiss(vectors, kind, params)
    rows = RowReader(np.load(folder / VECTORS, mmap_mode="r")) if kind == "ivfpq" else None
    if kind == "ivfpq" and options.nprobe is not None:  # given: measured as it is, default re-ranking
        params["nprobe"], recall = tune(Searcher(index, kind, rows), vectors, params["nprobe"], params["nlist"], True)
        params["rerank"] = RERANK_MIN
    elif kind == "ivfpq":
        params["nprobe"], params["rerank"], recall = tune_ivfpq(
            Searcher(index, kind, rows), vectors, params["nprobe"], params["nlist"]
        )
    elif kind == "hnsw":
        params = {"neighbours": HNSW_NEIGHBOURS}
        params["ef_search"], recall = tune(Searcher(index, kind), vectors, HNSW_EF_START, MAX_EF_SEARCH, False)
    else:
        recall = 1.0
    return index, params, recall


def write_index(
    folder: Path,
    meta: dict[str, Any],
    items: list[dict[str, Any]],
    vectors: np.ndarray,
    skipped: list[str],
    kind: str | bool = "flat",
    options: IndexOptions | None = None,
) -> dict[str, Any]:
    """Write a complete index into ``folder`` (meta.json last).

    Args:
        vectors: ``(N, D)`` float32 features of ``items``.
        kind: ``flat``, ``hnsw``, ``ivfpq`` or ``auto`` (chosen by N); True and False mean
            ``hnsw`` and ``flat``.
        options: ``ivfpq``'s parameters (the rules of :mod:`dsmd.search.kinds` by default).

    Returns:
        What ``meta.json`` records of the faiss index: ``{"kind", "params", "recall_at_10", ...}``.
    """
    if isinstance(kind, bool):
        kind = "hnsw" if kind else "flat"
    kind = choose_kind(kind, len(vectors))
    folder.mkdir(parents=True, exist_ok=True)
    _save_vectors(folder / VECTORS, vectors, np.float16 if kind == "ivfpq" else np.float32)
    write_text_atomic(folder / ITEMS, "".join(json.dumps(item) + "\n" for item in items))
    write_text_atomic(folder / SKIPPED, "".join(line + "\n" for line in skipped))
    index, params, recall = _faiss_and_params(folder, vectors, kind, options or IndexOptions())
    faiss_module().write_index(index, str(folder / FAISS))
    files = file_records(folder, [ITEMS, VECTORS, FAISS, SKIPPED])
    about = {
        "kind": kind,
        "params": params,
        "recall_at_10": round(recall, 4),
        "recall_queries": 0 if kind == "flat" else min(RECALL_QUERIES, len(vectors)),
        "recall_query_noise": QUERY_NOISE,  # (the queries: items plus noise of this many times their norm)
        "vectors": "float16" if kind == "ivfpq" else "float32",
        **({"rerank": {"factor": RERANK_FACTOR}} if kind == "ivfpq" else {}),  # (the depth: params["rerank"])
    }
    meta = {
        **meta,
        "version": INDEX_VERSION if kind == "ivfpq" else 1,
        "count": len(items),
        "fingerprint": fingerprint(items),
        "approximate": False if kind == "flat" else {"type": kind, **params},
        "index": about,
        "skipped": len(skipped),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files,
    }
    write_json_atomic(folder / META, sealed(meta))
    stamp_verified(folder, {name: r["sha256"] for name, r in files.items()})
    return about


def swap_into_place(new: Path, path: Path) -> None:
    """Replace the index at ``path`` (if any) by the complete one in ``new``."""
    old = Path(str(path) + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    new.rename(path)
    shutil.rmtree(old, ignore_errors=True)
