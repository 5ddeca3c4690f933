"""A search index: the features of a gallery of images or captions, and who they belong to.

::

    INDEX/meta.json      format version, what the items are (images / texts), the model that
                         encoded them (name, weights id, feature space, width) or the feature
                         store they came from, exact or approximate search, count, a fingerprint
                         of the items (paths with sizes and times), when it was built
    INDEX/items.jsonl    item i: {"id": i, "path": ...} or {"id": i, "text": ...}
    INDEX/vectors.npy    (N, D) float32 features (kept, so adding items re-encodes nothing)
    INDEX/index.faiss    a faiss index over them: exact inner product (IndexFlatIP) or, with
                         approximate search, HNSW (IndexHNSWFlat, inner product)
    INDEX/skipped.txt    files that could not be read, with the reason

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dsmd.errors import DsmdError
from dsmd.runtime.files import write_json_atomic, write_text_atomic

INDEX_VERSION = 1
META, ITEMS, VECTORS, FAISS, SKIPPED = "meta.json", "items.jsonl", "vectors.npy", "index.faiss", "skipped.txt"
CHUNK = 1024
HNSW_NEIGHBOURS = 32


def _faiss():
    try:
        import faiss
    except ImportError as exc:
        raise DsmdError("search indexes need faiss: pip install faiss-cpu") from exc
    return faiss


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


def build_faiss(vectors: np.ndarray, approximate: bool):
    """An inner-product faiss index over ``vectors (N, D)``: exact, or HNSW."""
    faiss = _faiss()
    dim = vectors.shape[1]
    index = (
        faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT) if approximate else faiss.IndexFlatIP(dim)
    )
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


@dataclass
class Index:
    """An index folder, opened (see the module docstring)."""

    path: Path
    meta: dict[str, Any]
    items: list[dict[str, Any]]
    vectors: np.ndarray
    faiss_index: Any

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
        recover(path)
        if not (path / META).is_file():
            raise DsmdError(
                f"no index at {path}. Build one with `dsmd index --model MODEL --images FOLDER --out {path}`."
            )
        fix = f"Build it again with `dsmd index ... --out {path}` (or delete {path})."
        try:
            meta = json.loads((path / META).read_text(encoding="utf-8"))
            items = [json.loads(line) for line in (path / ITEMS).read_text(encoding="utf-8").splitlines() if line]
            vectors = np.load(path / VECTORS, mmap_mode="r", allow_pickle=False)
            index = _faiss().read_index(str(path / FAISS))
        except (OSError, ValueError, RuntimeError) as exc:
            raise DsmdError(
                f"index {path} is incomplete or corrupt ({' '.join(str(exc).split())[:200]}). {fix}"
            ) from exc
        if meta.get("version") != INDEX_VERSION:
            raise DsmdError(f"index {path} has format {meta.get('version')!r}; this dsmd reads {INDEX_VERSION}. {fix}")
        counts = {len(items), vectors.shape[0], index.ntotal, meta.get("count")}
        if len(counts) != 1 or vectors.ndim != 2 or vectors.shape[1] != meta["model"]["dim"]:
            raise DsmdError(
                f"index {path}: its items ({len(items)}), vectors {tuple(vectors.shape)} and faiss index "
                f"({index.ntotal}) disagree. {fix}"
            )
        return cls(path, meta, items, vectors, index)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items of each query ``(Q, D)``: scores and ids, ``(Q, min(k, N))`` each."""
        k = min(k, len(self))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        scores, ids = self.faiss_index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, ids

    def label(self, i: int) -> str:
        item = self.items[i]
        return item.get("path", item.get("text", ""))


def recover(path: Path) -> None:
    """Finish a swap that an interruption cut between its two renames."""
    old = Path(str(path) + ".old")
    if not path.exists() and (old / META).is_file():
        old.rename(path)


def write_index(
    folder: Path,
    meta: dict[str, Any],
    items: list[dict[str, Any]],
    vectors: np.ndarray,
    skipped: list[str],
    approximate: bool,
) -> None:
    """Write a complete index into ``folder`` (meta.json last)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / VECTORS, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
    write_text_atomic(folder / ITEMS, "".join(json.dumps(item) + "\n" for item in items))
    write_text_atomic(folder / SKIPPED, "".join(line + "\n" for line in skipped))
    _faiss().write_index(build_faiss(vectors, approximate), str(folder / FAISS))
    meta = {
        **meta,
        "version": INDEX_VERSION,
        "count": len(items),
        "fingerprint": fingerprint(items),
        "approximate": {"type": "hnsw", "neighbours": HNSW_NEIGHBOURS} if approximate else False,
        "skipped": len(skipped),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(folder / META, meta)


def swap_into_place(new: Path, path: Path) -> None:
    """Replace the index at ``path`` (if any) by the complete one in ``new``."""
    old = Path(str(path) + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    new.rename(path)
    shutil.rmtree(old, ignore_errors=True)
