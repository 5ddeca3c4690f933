"""Index kinds (flat, hnsw, ivfpq) on synthetic features: parameter rules, re-ranking from disk,
recall measured at build time, old indexes still read, shards searched as one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dsmd.errors import DsmdError
from dsmd.search.engine import RowReader, exact_neighbours, recall_at_k, recall_queries
from dsmd.search.index import FAISS, META, VECTORS, Index, write_index
from dsmd.search.items import ItemFile
from dsmd.search.kinds import AUTO_FLAT_MAX, IndexOptions, choose_kind, ivfpq_params, rerank_depth, set_search_param
from dsmd.search.shards import ShardedIndex, merge_top_k, open_index, parse_shard, shard_of

MODEL = {"name": "synthetic", "model_id": "abc", "space": "s1", "dim": 32, "normalized": True}


def _features(count: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    """``(count, dim)`` unit vectors around 40 centres: neighbourhoods, as real features have."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    x = (centres[rng.integers(0, 40, count)] + 0.6 * rng.normal(size=(count, dim))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _write(folder: Path, vectors: np.ndarray, kind: str, options: IndexOptions | None = None, **meta) -> Index:
    items = [{"id": i, "text": f"caption {i}"} for i in range(len(vectors))]
    write_index(folder, {"kind": "texts", "model": MODEL, **meta}, items, vectors, [], kind, options)
    return Index.open(folder)


@pytest.fixture(scope="module")
def gallery() -> np.ndarray:
    return _features(3000)


@pytest.fixture(scope="module")
def ivfpq(gallery, tmp_path_factory) -> Index:
    return _write(tmp_path_factory.mktemp("ivfpq") / "index", gallery, "ivfpq")


def test_the_parameter_rules():
    assert ivfpq_params(1_000_000, 384, IndexOptions()) == {"nlist": 4096, "m": 96, "nbits": 8, "nprobe": 64}
    assert ivfpq_params(100_000_000, 768, IndexOptions()) == {"nlist": 32768, "m": 192, "nbits": 8, "nprobe": 512}
    small = ivfpq_params(3000, 32, IndexOptions())
    assert small["nlist"] <= 3000 // 39 and small["m"] == 8 and small["nbits"] == 6 and small["nprobe"] == 8
    given = ivfpq_params(1_000_000, 384, IndexOptions(nlist=1024, pq_m=48, pq_bits=8, nprobe=20))
    assert given == {"nlist": 1024, "m": 48, "nbits": 8, "nprobe": 20}
    assert choose_kind("auto", AUTO_FLAT_MAX) == "flat" and choose_kind("auto", AUTO_FLAT_MAX + 1) == "ivfpq"
    assert choose_kind("hnsw", 10) == "hnsw"
    assert rerank_depth(10, 1_000_000) == 100 and rerank_depth(100, 1_000_000) == 1000 and rerank_depth(10, 50) == 50


@pytest.mark.parametrize(
    "count, options, fragment",
    [
        (500, IndexOptions(), "it needs at least 1,000, this one has 500. Use --index-kind flat"),
        (5000, IndexOptions(pq_m=7), "--pq-m must divide the feature width 32: one of 2, 4, 8, 16"),
        (5000, IndexOptions(nlist=1000), "--nlist 1000 needs at least 39,000 items"),
        (5000, IndexOptions(pq_bits=8), "--pq-bits 8 needs at least 9,984 items"),
    ],
)
def test_parameters_that_do_not_fit_name_the_fix(count, options, fragment):
    with pytest.raises(DsmdError, match=fragment):
        ivfpq_params(count, 32, options)


def test_bad_options_are_refused():
    with pytest.raises(DsmdError, match="--index-kind must be one of flat, hnsw, ivfpq or auto"):
        IndexOptions(kind="lsh")
    with pytest.raises(DsmdError, match="--nprobe must be at least 1"):
        IndexOptions(nprobe=0)
    with pytest.raises(DsmdError, match="--shard takes K/N"):
        parse_shard("4/4")
    assert parse_shard("1/4") == (1, 4)


def test_ivfpq_keeps_float16_vectors_and_records_its_measured_recall(ivfpq, gallery):
    meta = json.loads((ivfpq.path / META).read_text())
    assert meta["version"] == 2 and meta["index"]["kind"] == "ivfpq" and ivfpq.index_kind == "ivfpq"
    assert meta["index"]["vectors"] == "float16" and ivfpq.vectors.dtype == np.float16
    assert meta["index"]["recall_queries"] == 200 and meta["index"]["recall_at_10"] >= 0.95
    assert meta["approximate"]["type"] == "ivfpq" and meta["index"]["params"]["nprobe"] >= 8
    assert "ivfpq index" in ivfpq.describe_search() and "re-ranked" in ivfpq.describe_search()
    # the compressed index itself: a code and an id per item, plus the coarse centroids
    m, nlist = meta["index"]["params"]["m"], meta["index"]["params"]["nlist"]
    assert (ivfpq.path / FAISS).stat().st_size < len(gallery) * (m + 8) + nlist * 32 * 4 + 100_000


def test_ivfpq_answers_with_exact_scores_of_its_float16_vectors(ivfpq, gallery):
    queries = _features(50, seed=7)
    scores, ids = ivfpq.search(queries, 10)
    assert scores.shape == ids.shape == (50, 10) and (ids >= 0).all()
    stored = gallery.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ stored.T, ids, axis=1), rtol=1e-5, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    assert recall_at_k(ids, exact_neighbours(gallery, queries, 10)) >= 0.9


def test_rows_are_read_from_disk_not_memory(ivfpq, gallery):
    reader = RowReader(ivfpq.vectors)
    ids = np.array([2999, 0, 17, 17, 1500])
    np.testing.assert_array_equal(reader.rows(ids), gallery[ids].astype(np.float16).astype(np.float32))


def test_hnsw_and_flat_record_what_answers(gallery, tmp_path):
    hnsw = _write(tmp_path / "hnsw", gallery[:1000], "hnsw")
    assert hnsw.meta["version"] == 1 and hnsw.meta["approximate"]["type"] == "hnsw"
    assert hnsw.meta["index"]["params"]["ef_search"] >= 16 and hnsw.recall >= 0.95
    assert hnsw.faiss_index.hnsw.efSearch == hnsw.meta["index"]["params"]["ef_search"]
    flat = _write(tmp_path / "flat", gallery[:1000], "auto")
    assert flat.index_kind == "flat" and flat.recall == 1.0 and flat.meta["approximate"] is False
    assert flat.describe_search() == "exact search (flat index)" and flat.vectors.dtype == np.float32


def test_indexes_written_before_kinds_are_still_read(gallery, tmp_path):
    for kind, approximate in (("flat", False), ("hnsw", {"type": "hnsw", "neighbours": 32})):
        index = _write(tmp_path / kind, gallery[:500], kind)
        meta = json.loads((index.path / META).read_text())
        del meta["index"], meta["files"], meta["sha256"]  # (kinds, checksums: written by later versions)
        (index.path / META).write_text(json.dumps({**meta, "version": 1, "approximate": approximate}))
        old = Index.open(index.path)
        assert old.index_kind == kind and old.search(gallery[:3], 1)[1][:, 0].tolist() == [0, 1, 2]
    meta["version"] = 3
    (index.path / META).write_text(json.dumps(meta))
    with pytest.raises(DsmdError, match="has format 3; this dsmd reads 1 and 2"):
        Index.open(index.path)


def test_merge_top_k_keeps_the_best_of_every_shard():
    scores = [np.array([[0.9, 0.5, 0.1]]), np.array([[0.7, 0.6, -3.4e38]])]
    ids = [np.array([[4, 0, 2]]), np.array([[1, 0, -1]])]
    top_scores, top_ids = merge_top_k(scores, ids, [0, 10], 4)
    assert top_ids.tolist() == [[4, 11, 10, 0]] and np.allclose(top_scores, [[0.9, 0.7, 0.6, 0.5]])
    _, few = merge_top_k([np.array([[0.2, -3.4e38]])], [np.array([[3, -1]])], [0], 2)
    assert few.tolist() == [[3, -1]]


def test_shards_searched_as_one_answer_as_the_whole_gallery(gallery, tmp_path):
    vectors = gallery[:1200]
    labels = [f"caption {i}" for i in range(len(vectors))]
    whole = _write(tmp_path / "whole", vectors, "flat")
    shards = []
    for k in range(3):
        rows = [i for i, label in enumerate(labels) if shard_of(label, 3) == k]
        items = [{"id": j, "text": labels[i]} for j, i in enumerate(rows)]
        meta = {"kind": "texts", "model": MODEL, "shard": {"index": k, "of": 3}}
        write_index(tmp_path / f"shard{k}", meta, items, vectors[rows], [], "flat")
        shards.append(str(tmp_path / f"shard{k}"))
    assert 300 < len(Index.open(shards[0])) < 500  # the hash spreads the items
    sharded = open_index(shards)
    assert isinstance(sharded, ShardedIndex) and len(sharded) == len(vectors)
    queries = _features(20, seed=3)
    want_scores, want_ids = whole.search(queries, 10)
    got_scores, got_ids = sharded.search(queries, 10)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-6)
    assert [[sharded.label(int(i)) for i in row] for row in got_ids] == [
        [whole.label(int(i)) for i in row] for row in want_ids
    ]
    assert sorted(sharded.labels()) == sorted(labels) and "3 shards" in sharded.describe_search()
    with pytest.raises(DsmdError, match="shards 0/3, 2/3: give every shard of one gallery once"):
        open_index([shards[0], shards[2]])
    with pytest.raises(DsmdError, match="given twice"):
        open_index([shards[0], shards[0]])


def test_shards_of_other_models_are_refused(gallery, tmp_path):
    _write(tmp_path / "a", gallery[:100], "flat")
    items = [{"id": i, "text": f"other {i}"} for i in range(100)]
    write_index(tmp_path / "b", {"kind": "texts", "model": {**MODEL, "model_id": "zzz"}}, items, gallery[:100], [])
    with pytest.raises(DsmdError, match="their scores cannot be merged"):
        open_index([str(tmp_path / "a"), str(tmp_path / "b")])


def test_a_truncated_vectors_file_is_one_line(gallery, tmp_path):
    index = _write(tmp_path / "index", gallery[:1000], "flat")
    (index.path / VECTORS).write_bytes((index.path / VECTORS).read_bytes()[:1000])
    with pytest.raises(DsmdError, match=r"vectors.npy is damaged \(1000 bytes where"):
        Index.open(index.path)


def test_items_are_read_from_their_file_when_asked(tmp_path):
    lines = [{"id": i, "path": f"photos/{'é' * (i % 3)}{i}.png"} for i in range(5)]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in lines), encoding="utf-8")
    items = ItemFile(tmp_path / "items.jsonl")
    assert len(items) == 5 and items[3] == lines[3] and items[-1] == lines[4] and items[1:3] == lines[1:3]
    assert list(items) == lines
    with pytest.raises(IndexError):
        items[5]
    (tmp_path / "last.jsonl").write_text(json.dumps(lines[0]) + "\n" + json.dumps(lines[1]))  # no last newline
    assert list(ItemFile(tmp_path / "last.jsonl")) == lines[:2] and ItemFile(tmp_path / "last.jsonl")[1] == lines[1]


def test_coarse_codes_are_repaired_by_deeper_re_ranking_not_by_probing(gallery, tmp_path):
    """With 2-byte codes no nprobe reaches the target from 100 candidates: tuning re-ranks more,
    and the recall it records is what the opened index gives on the build's queries."""
    coarse = IndexOptions(pq_m=2, pq_bits=6)
    index = _write(tmp_path / "coarse", gallery, "ivfpq", coarse)
    params = index.meta["index"]["params"]
    assert params["rerank"] > 100 and index.recall >= 0.95
    assert f"top {params['rerank']} re-ranked" in index.describe_search()
    queries = recall_queries(gallery)
    truth = exact_neighbours(gallery, queries, 10)
    assert recall_at_k(index.search(queries, 10)[1], truth) == pytest.approx(index.recall, abs=1e-4)
    index.searcher.rerank = 100  # the same index at the default depth, every list probed: short of the target
    set_search_param(index.faiss_index, "ivfpq", params["nlist"])
    assert recall_at_k(index.search(queries, 10)[1], truth) < 0.95
    assert rerank_depth(10, 10**6, 400) == 400 and rerank_depth(25, 10**6, 400) == 1000


def test_an_index_without_a_tuned_depth_re_ranks_the_default(ivfpq, tmp_path):
    """Indexes written before the depth was tuned have no params.rerank: 100 candidates."""
    meta = json.loads((ivfpq.path / META).read_text())
    del meta["index"]["params"]["rerank"], meta["files"], meta["sha256"]  # (nor checksums: they came later)
    folder = tmp_path / "old"
    folder.mkdir()
    for name in (FAISS, VECTORS, "items.jsonl"):
        (folder / name).write_bytes((ivfpq.path / name).read_bytes())
    (folder / META).write_text(json.dumps(meta))
    assert Index.open(folder).searcher.rerank == 100
