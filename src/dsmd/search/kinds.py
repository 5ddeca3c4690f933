"""Which faiss index answers a gallery, with which parameters: chosen from the item count.

Per item, for a gallery of width ``D`` (1,536 bytes of float32 at D = 384):

- ``flat``: ``IndexFlatIP``, exact inner product; ``4 D`` bytes in memory, float32 vectors kept
  on disk;
- ``hnsw``: ``IndexHNSWFlat`` (M = 32), inner product; ``4 D + ~8 M`` bytes in memory (about
  1,800 at D = 384), float32 vectors kept on disk;
- ``ivfpq``: ``IndexIVFPQ``, inner product, re-ranked; ``m nbits / 8 + 8`` bytes in memory
  (code and id, plus the coarse centroids: about 110 at 1M items and D = 384), float16 vectors
  kept on disk (``2 D`` bytes) and read per query, never held in memory.

``ivfpq`` keeps each item as a product-quantised code of ``m`` bytes in one of ``nlist``
inverted lists; a query scans the ``nprobe`` lists nearest to it, takes the
:func:`rerank_depth` best codes, and re-ranks those candidates by the exact inner product
with their float16 vectors, read from ``vectors.npy`` with ``pread`` (page cache or disk: they
are not part of the process's memory). ``auto`` picks ``flat`` up to :data:`AUTO_FLAT_MAX`
items (exact, and a query scans them in a few milliseconds) and ``ivfpq`` above. Codes of 8
bits: 4-bit "fast-scan" codes of the same size (``IndexIVFPQFastScan``, twice as many
sub-quantisers) scan faster, but on the demo student's features (100,000 items, captions as
queries) their recall@10 after re-ranking stopped at 0.87, where 8-bit codes reached 0.97.

Parameter rules (each can be given instead):

- ``nlist`` = the power of two nearest ``4 sqrt(N)``, at most ``N / 39`` (k-means wants 39
  training points per centroid): 4,096 lists at 1M items;
- ``m`` = the largest divisor of ``D`` up to ``D / 4`` (four dimensions per sub-quantiser,
  at most 256 bytes a code): 96 at ``D = 384``;
- ``nbits`` = 8, fewer below ``39 * 256`` items (``floor(log2(N / 39))``);
- ``nprobe`` starts at ``max(8, nlist / 64)``; the re-ranking depth of a top 10 (``rerank``)
  at 100. For each depth from 100, doubling to :data:`RERANK_MAX`, ``nprobe`` doubles until
  the build's measured recall@10 reaches :data:`RECALL_TARGET`; the fastest such pair is kept
  (:func:`dsmd.search.engine.tune_ivfpq`). HNSW's ``efSearch`` doubles from 16 likewise.
  Without a tuned depth (an index written before it was tuned, or ``nprobe`` given) a top 10
  re-ranks 100.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsmd.errors import DsmdError

KINDS = ("flat", "hnsw", "ivfpq")
AUTO_FLAT_MAX = 250_000
IVFPQ_MIN_ITEMS = 1_000
HNSW_NEIGHBOURS = 32
RECALL_TARGET = 0.95
RERANK_MIN, RERANK_FACTOR = 100, 10
RERANK_MAX = 1600  # the deepest re-ranking tuning tries (candidates of a top 10)
RECALL_K_TUNED = 10  # the top k whose recall the build tunes
MAX_TRAIN_PER_LIST = 50


def faiss_module():
    """faiss, or a DsmdError naming the package to install."""
    try:
        import faiss
    except ImportError as exc:
        raise DsmdError("search indexes need faiss: pip install faiss-cpu") from exc
    return faiss


@dataclass(frozen=True)
class IndexOptions:
    """What ``dsmd index`` was asked for (None: the rule of the module docstring decides).

    Attributes:
        kind: ``flat``, ``hnsw``, ``ivfpq`` or ``auto``; None keeps an existing index's kind
            (``auto`` for a new one).
        nlist, pq_m, pq_bits, nprobe: ``ivfpq``'s parameters; ``nprobe`` given is used as it
            is (no tuning).
    """

    kind: str | None = None
    nlist: int | None = None
    pq_m: int | None = None
    pq_bits: int | None = None
    nprobe: int | None = None

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in (*KINDS, "auto"):
            raise DsmdError(f"--index-kind must be one of {', '.join(KINDS)} or auto, got {self.kind!r}.")
        for flag, value in (("--nlist", self.nlist), ("--pq-m", self.pq_m), ("--nprobe", self.nprobe)):
            if value is not None and value < 1:
                raise DsmdError(f"{flag} must be at least 1, got {value}.")
        if self.pq_bits is not None and not 4 <= self.pq_bits <= 16:
            raise DsmdError(f"--pq-bits must be from 4 to 16, got {self.pq_bits}.")


def choose_kind(requested: str, count: int) -> str:
    """``requested``, or for ``auto`` the kind that suits ``count`` items (module docstring)."""
    if requested == "auto":
        return "flat" if count <= AUTO_FLAT_MAX else "ivfpq"
    return requested


def _nearest_power_of_two(x: float) -> int:
    return 2 ** max(0, round(math.log2(max(x, 1.0))))


def ivfpq_params(count: int, dim: int, options: IndexOptions) -> dict[str, int]:
    """``{"nlist", "m", "nbits", "nprobe"}`` for ``count`` items of width ``dim``.

    ``nprobe`` is where tuning starts (or the one given).

    Raises:
        DsmdError: too few items to train on, or a parameter that does not fit.
    """
    if count < IVFPQ_MIN_ITEMS:
        raise DsmdError(
            f"an ivfpq index trains its codebooks on the items: it needs at least {IVFPQ_MIN_ITEMS:,}, "
            f"this one has {count:,}. Use --index-kind flat (exact, and as fast at this size) or auto."
        )
    nlist = options.nlist or max(1, min(_nearest_power_of_two(4 * math.sqrt(count)), count // 39))
    if nlist > count // 39:
        raise DsmdError(f"--nlist {nlist} needs at least {39 * nlist:,} items (39 a list); this index has {count:,}.")
    divisors = [d for d in range(1, dim + 1) if dim % d == 0]
    m = options.pq_m or max(d for d in divisors if d <= max(1, dim // 4) and d <= 256)
    if dim % m:
        raise DsmdError(
            f"--pq-m must divide the feature width {dim}: one of {', '.join(map(str, divisors[1:-1] or divisors))}."
        )
    nbits = options.pq_bits or min(8, int(math.log2(count / 39)))
    if count < 39 * 2**nbits:
        raise DsmdError(f"--pq-bits {nbits} needs at least {39 * 2**nbits:,} items; this index has {count:,}.")
    nprobe = min(nlist, options.nprobe or max(8, nlist // 64))
    return {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": nprobe}


def rerank_depth(k: int, count: int, rerank: int = RERANK_MIN) -> int:
    """How many ``ivfpq`` candidates a top-``k`` query re-ranks exactly: ``rerank`` for a top 10
    (the index's tuned ``params["rerank"]``), in proportion above, at least ``10 k``."""
    return min(count, max(rerank, -(-rerank * k // RECALL_K_TUNED), RERANK_FACTOR * k))


def build_faiss(vectors: np.ndarray, kind: str, params: dict[str, Any]):
    """A trained faiss index of ``kind`` holding ``vectors (N, D)`` (float32), inner product."""
    faiss = faiss_module()
    count, dim = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    else:
        quantizer = faiss.IndexFlatIP(dim)  # (faiss's wrapper keeps it alive with the index)
        index = faiss.IndexIVFPQ(
            quantizer, dim, params["nlist"], params["m"], params["nbits"], faiss.METRIC_INNER_PRODUCT
        )
        # (no polysemous training: it reorders codes for Hamming filtering, which no search here uses)
        index.do_polysemous_training = False
        rows = min(count, max(MAX_TRAIN_PER_LIST * params["nlist"], 256 * 2 ** params["nbits"]))
        sample = np.sort(np.random.default_rng(0).choice(count, rows, replace=False))
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    for start in range(0, count, 100_000):  # (blocks: no second float32 copy of a large gallery)
        index.add(np.ascontiguousarray(vectors[start : start + 100_000], dtype=np.float32))
    return index


def set_search_param(index, kind: str, value: int | None) -> None:
    """Set ``nprobe`` (ivfpq) or ``efSearch`` (hnsw) on a faiss index; nothing for flat or None."""
    if value is None or kind == "flat":
        return
    if kind == "ivfpq":
        faiss_module().extract_index_ivf(index).nprobe = int(value)
    else:
        index.hnsw.efSearch = int(value)


def describe(kind: str, params: dict[str, Any], recall: float | None) -> str:
    """One phrase for the search output: which index answers, how exactly."""
    if kind == "flat":
        return "exact search (flat index)"
    if kind == "hnsw":
        text = "approximate search (hnsw index" + (f", efSearch {params['ef_search']}" if "ef_search" in params else "")
    else:
        text = (
            f"approximate search (ivfpq index: {params['nlist']} lists, PQ {params['m']}x{params['nbits']}, "
            f"nprobe {params['nprobe']}, top {params.get('rerank', RERANK_MIN)} re-ranked"
        )
    return text + (f"; recall@10 {recall:.3f} when built)" if recall is not None else ")")
