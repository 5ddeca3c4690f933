"""Answering queries with a faiss index of any kind, and measuring how exactly it answers.

An ``ivfpq`` index returns candidates ranked by their compressed codes; :class:`Searcher`
re-ranks them by the exact inner product with their float16 vectors, which
:class:`RowReader` reads from ``vectors.npy`` with ``pread`` (so they are never part of the
process's memory: the kernel's page cache keeps the ones read often).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from dsmd.search.kinds import RECALL_TARGET, RERANK_MAX, RERANK_MIN, faiss_module, rerank_depth, set_search_param

RECALL_QUERIES, RECALL_K = 200, 10
QUERY_NOISE = 2.0  # the build's queries: items plus Gaussian noise of twice their norm (see recall_queries)
MAX_EF_SEARCH = 1024
MISSING_SCORE = float(np.finfo(np.float32).min)  # (what faiss reports beside an id of -1)


class RowReader:
    """Rows of a memory-mapped ``.npy`` matrix ``(N, D)``, read with ``pread`` on demand."""

    def __init__(self, vectors: np.memmap):
        self._file = open(vectors.filename, "rb")  # noqa: SIM115 - held as long as the index is open
        self._offset, self._dtype = int(vectors.offset), vectors.dtype
        self.dim = int(vectors.shape[1])
        self._row_bytes = self.dim * vectors.dtype.itemsize

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """``(len(ids), D)`` float32: rows ``ids (n,)`` (read in file order, returned in ``ids``'s)."""
        order = np.argsort(ids, kind="stable")
        fd, size = self._file.fileno(), self._row_bytes
        data = b"".join(os.pread(fd, size, self._offset + int(i) * size) for i in ids[order])
        out = np.empty((len(ids), self.dim), np.float32)
        out[order] = np.frombuffer(data, self._dtype).reshape(len(ids), self.dim)
        return out


class Searcher:
    """Top-``k`` search over a faiss index of ``kind``; ``rows`` re-ranks an ``ivfpq`` one's
    ``rerank`` best candidates (of a top 10: :func:`~dsmd.search.kinds.rerank_depth`)."""

    def __init__(self, faiss_index: Any, kind: str, rows: RowReader | None = None, rerank: int = RERANK_MIN):
        if kind == "ivfpq" and rows is None:
            raise ValueError("an ivfpq index needs the rows of its vectors to re-rank")
        self.faiss_index, self.kind, self.rows, self.rerank = faiss_index, kind, rows, rerank

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and ids ``(Q, k)`` of queries ``(Q, D)``, best first; id -1 where none (k <= N)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.kind != "ivfpq":
            return self.faiss_index.search(queries, k)
        _, candidates = self.faiss_index.search(queries, rerank_depth(k, self.faiss_index.ntotal, self.rerank))
        scores = np.full((len(queries), k), MISSING_SCORE, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for q, (query, found) in enumerate(zip(queries, candidates, strict=True)):
            found = found[found >= 0]
            exact = self.rows.rows(found) @ query
            best = np.argsort(-exact, kind="stable")[:k]
            scores[q, : len(best)], ids[q, : len(best)] = exact[best], found[best]
        return scores, ids


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids ``(Q, k)`` of the exact top ``k`` of ``queries (Q, D)`` among ``vectors (N, D)`` (inner product)."""
    faiss = faiss_module()
    _, ids = faiss.knn(
        np.ascontiguousarray(queries, dtype=np.float32),
        np.ascontiguousarray(vectors, dtype=np.float32),
        k,
        metric=faiss.METRIC_INNER_PRODUCT,
    )
    return ids


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of ``|found ∩ truth| / |truth|``, ids ``(Q, k)`` each (-1: none)."""
    hits = [
        len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, int((t >= 0).sum())) for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits))


def recall_queries(vectors: np.ndarray, count: int = RECALL_QUERIES) -> np.ndarray:
    """``(Q, D)`` unit queries standing in for real ones: ``count`` items (a fixed sample) each
    pushed off the gallery by Gaussian noise of :data:`QUERY_NOISE` times their norm.

    An item's own vector is too easy a query (it scores 1 against itself, far above the rest);
    a caption queried against images scores 0.3 to 0.5 against its best match, with close
    runners-up. The noisy items score about 0.45 against theirs, and on the student's features
    (``benchmarks/bench_search_scale.py``) the recall they give stays at or below that of real
    captions for both approximate kinds.
    """
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(vectors), min(count, len(vectors)), replace=False))
    items = np.asarray(vectors[sample], dtype=np.float32)
    scale = QUERY_NOISE * np.linalg.norm(items, axis=1, keepdims=True) / np.sqrt(items.shape[1])
    queries = items + scale * rng.standard_normal(items.shape).astype(np.float32)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def tune(searcher: Searcher, vectors: np.ndarray, start: int, cap: int, fixed: bool) -> tuple[int, float]:
    """The search parameter (``nprobe`` / ``efSearch``) and the recall@10 it gives.

    The queries are :func:`recall_queries`; the truth is exact search over ``vectors (N, D)``.
    From ``start`` the parameter doubles until recall reaches :data:`RECALL_TARGET` or ``cap``;
    ``fixed`` measures ``start`` alone.

    Returns:
        ``(parameter, recall@10)``; for a flat index ``(0, 1.0)``.
    """
    if searcher.kind == "flat":
        return 0, 1.0
    queries = recall_queries(vectors)
    k = min(RECALL_K, len(vectors))
    truth = exact_neighbours(vectors, queries, k)
    value = min(start, cap)
    while True:
        set_search_param(searcher.faiss_index, searcher.kind, value)
        recall = recall_at_k(searcher.search(queries, k)[1], truth)
        if fixed or recall >= RECALL_TARGET or value >= cap:
            return value, recall
        value = min(cap, value * 2)


def _fewest_lists(
    searcher: Searcher, queries: np.ndarray, truth: np.ndarray, rerank: int, start: int, limit: int
) -> tuple[float, int, float]:
    """``(recall, nprobe, seconds)`` of the last ``nprobe`` tried at depth ``rerank``: doubling from
    ``start`` until the recall reaches :data:`RECALL_TARGET` or ``nprobe`` reaches ``limit``."""
    searcher.rerank, nprobe = rerank, min(start, limit)
    while True:
        set_search_param(searcher.faiss_index, "ivfpq", nprobe)
        t0 = time.perf_counter()
        recall = recall_at_k(searcher.search(queries, truth.shape[1])[1], truth)
        if recall >= RECALL_TARGET or nprobe >= limit:
            return recall, nprobe, time.perf_counter() - t0
        nprobe = min(limit, nprobe * 2)


def tune_ivfpq(searcher: Searcher, vectors: np.ndarray, start: int, cap: int) -> tuple[int, int, float]:
    """``nprobe``, ``rerank`` and the recall@10 they give: the fastest pair that reaches
    :data:`RECALL_TARGET` on :func:`recall_queries`.

    Probing more lists finds the true neighbours' codes; re-ranking more candidates recovers
    neighbours whose compressed codes scored below others (product quantisation's error, which
    no ``nprobe`` repairs). For each ``rerank`` from 100, doubling to
    :data:`~dsmd.search.kinds.RERANK_MAX`, ``nprobe`` doubles from ``start`` (up to the smallest
    that reached the target so far, or ``cap``) until the target is reached; of the pairs that
    reach it, the one whose queries ran fastest is kept (none: the pair with the best recall).
    """
    queries = recall_queries(vectors)
    truth = exact_neighbours(vectors, queries, min(RECALL_K, len(vectors)))
    reached: list[tuple[float, int, int, float]] = []  # (seconds, nprobe, rerank, recall)
    closest = (-1.0, start, RERANK_MIN)  # (recall, nprobe, rerank)
    rerank, limit = RERANK_MIN, cap
    while rerank <= RERANK_MAX:
        recall, nprobe, seconds = _fewest_lists(searcher, queries, truth, rerank, start, limit)
        closest = max(closest, (recall, nprobe, rerank))
        if recall >= RECALL_TARGET:
            reached.append((seconds, nprobe, rerank, recall))
            limit = nprobe
        if (reached and limit == min(start, cap)) or rerank >= len(vectors):
            break  # nothing probes fewer lists, or every item is re-ranked already: deeper only costs
        rerank *= 2
    _, nprobe, rerank, recall = min(reached) if reached else (0.0, closest[1], closest[2], closest[0])
    set_search_param(searcher.faiss_index, "ivfpq", nprobe)
    searcher.rerank = rerank
    return nprobe, rerank, recall
