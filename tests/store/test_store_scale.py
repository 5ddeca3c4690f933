"""Stores larger than memory: sharded, float16, memory-mapped stores read row by row."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dsmd.extraction.extractor as ex
from dsmd.config import load_config
from dsmd.errors import DsmdError
from dsmd.extraction.importer import import_features
from dsmd.store import FeatureStore, SplitFeatures, write_split
from store_helpers import write_manifest

QUIET = {"progress": False, "log": lambda *_: None}


def _imported(overrides: list[str], store: Path, *extra: str) -> FeatureStore:
    return import_features(load_config(None, [*overrides, f"store={store}", *extra]), log=lambda *_: None)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_sharded_store_equals_unsharded(imported_overrides, external_features, tmp_path, dtype):
    source = tmp_path / "feats"
    source.mkdir()
    for split, feats in external_features.items():
        np.save(source / f"{split}_image.npy", feats["image"].numpy())
        np.save(source / f"{split}_text.npy", feats["text"].numpy())
    overrides = [*imported_overrides, f"teacher.name_or_path={source}", f"store_dtype={dtype}"]
    whole = _imported(overrides, tmp_path / "whole")
    sharded = _imported(overrides, tmp_path / "sharded", "store_shard_rows=5")
    # train: 12 images, 24 captions -> 5 shards; images in the first 3, captions in all
    files = sharded.files("train")
    assert [f["file"] for f in files] == [f"train-{k:05d}-of-00005.safetensors" for k in range(5)]
    assert [f["images"] for f in files] == [[0, 5], [5, 10], [10, 12], [12, 12], [12, 12]]
    assert [f["captions"] for f in files] == [[0, 5], [5, 10], [10, 15], [15, 20], [20, 24]]
    assert sorted(p.name for p in sharded.path.iterdir()) == sorted(
        ["manifest.json", ".verified.json"] + [f["file"] for s in ("train", "val", "test") for f in sharded.files(s)]
    )
    assert all(len(f["sha256"]) == 64 and f["bytes"] == (sharded.path / f["file"]).stat().st_size for f in files)
    g = torch.Generator().manual_seed(1)
    for split in ("train", "val", "test"):
        a, b = sharded.split(split), whole.split(split)
        assert a.memory_mapped and (a.num_images, a.num_captions, a.dim) == (b.num_images, b.num_captions, 16)
        i = torch.randint(a.num_images, (40,), generator=g)
        j = torch.randint(a.num_captions, (40,), generator=g)
        rows_a, rows_b = a.image_rows(i, torch.zeros_like(i)), b.image_rows(i, torch.zeros_like(i))
        assert rows_a.dtype == torch.float32 and rows_a.shape == (40, 16)
        assert torch.equal(rows_a, rows_b) and torch.equal(a.text_rows(j), b.text_rows(j))
        assert torch.equal(a.image, b.image) and torch.equal(a.text, b.text)
        assert torch.equal(a.caption_image, b.caption_image)
        assert torch.equal(a.caption_image, external_features[split]["caption_image"])
        assert a.image.dtype == torch.float32 and not a.memory_mapped  # read on access, then kept
        assert torch.equal(rows_a, a.image[i]) and torch.equal(a.text_rows(j), a.text[j])
    # pickled (DataLoader workers, spawn), a memory-mapped split carries file names, not rows
    fresh = FeatureStore.open(sharded.path).split("train")
    payload = pickle.dumps(fresh)
    assert len(payload) < 4096 and fresh.memory_mapped
    copy = pickle.loads(payload)
    assert torch.equal(copy.text_rows(torch.tensor([23, 0])), sharded.split("train").text[[23, 0]])
    assert torch.equal(copy.caption_image, external_features["train"]["caption_image"])
    if dtype == "float16":
        want = torch.nn.functional.normalize(external_features["train"]["text"], dim=-1)
        torch.testing.assert_close(sharded.split("train").text, want.half().float())
        assert (sharded.path / files[0]["file"]).stat().st_size < (whole.path / "train.safetensors").stat().st_size


def test_views_sharded_float16_extraction(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, "store_views=2"]
    whole = ex.extract(load_config(None, [*overrides, f"store={tmp_path / 'whole'}"]), **QUIET)
    sharded = ex.extract(
        load_config(None, [*overrides, f"store={tmp_path / 'sharded'}", "store_shard_rows=7", "store_dtype=float16"]),
        **QUIET,
    )
    assert sharded.manifest["shard_rows"] == 7 and len(sharded.files("train")) == 4  # 24 captions
    a, b = sharded.split("train"), whole.split("train")
    assert a.num_views == 2 and sharded.split("val").num_views == 0
    image = torch.tensor([11, 0, 7, 7, 6, 3])
    view = torch.tensor([0, 2, 1, 0, 2, 1])
    expected = torch.stack(
        [b.image[i] if v == 0 else b.image_views[i, v - 1] for i, v in zip(image, view, strict=True)]
    )
    got = a.image_rows(image, view)
    assert got.dtype == torch.float32 and a.memory_mapped
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-3)  # float16 of unit vectors
    assert torch.equal(got, expected.half().float())
    assert torch.equal(
        a.image_rows(image, view),
        SplitFeatures(a.image, a.text, a.caption_image, a.image_views).image_rows(image, view),
    )
    assert torch.equal(a.image_views, b.image_views.half().float())
    with pytest.raises(IndexError, match="view"):
        a.image_rows(image, torch.full_like(image, 3))
    with pytest.raises(IndexError):
        a.text_rows(torch.tensor([24]))


@pytest.mark.skipif(sys.platform == "win32", reason="needs a file system with sparse files")
def test_rows_of_a_store_larger_than_memory(tmp_path):
    # a sparse 1 TiB split: 2^29 captions x 1024 float16 features (and 4 GiB of caption_image);
    # reading it whole cannot even be tried here, reading rows touches only those rows
    n_i, n_t, dim = 1024, 2**29, 1024
    header = {
        "image": {"dtype": "F16", "shape": [n_i, dim], "data_offsets": [0, n_i * dim * 2]},
        "text": {"dtype": "F16", "shape": [n_t, dim], "data_offsets": [n_i * dim * 2, (n_i + n_t) * dim * 2]},
        "caption_image": {
            "dtype": "I64",
            "shape": [n_t],
            "data_offsets": [(n_i + n_t) * dim * 2, (n_i + n_t) * dim * 2 + n_t * 8],
        },
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    start = 8 + len(raw)
    file = tmp_path / "train.safetensors"
    rows = {3: 1.5, 2**28 + 1: -2.0, n_t - 1: 0.25}
    with open(file, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(start + header["caption_image"]["data_offsets"][1])
        for row, value in rows.items():
            f.seek(start + (n_i + row) * dim * 2)
            f.write(np.full(dim, value, dtype="<f2").tobytes())
        f.seek(start + 5 * dim * 2)
        f.write(np.arange(dim, dtype="<f2").tobytes())
    write_manifest(
        tmp_path,
        dim,
        {"train": (n_i, n_t)},
        {"train": [{"file": file.name, "images": [0, n_i], "captions": [0, n_t], "bytes": file.stat().st_size}]},
        dtype="float16",
    )
    split = FeatureStore.open(tmp_path).split("train")
    assert (split.num_images, split.num_captions, split.dim) == (n_i, n_t, dim)
    got = split.text_rows(torch.tensor([*rows, 7]))
    assert got.dtype == torch.float32 and got.shape == (4, dim)
    assert torch.equal(got, torch.tensor([*rows.values(), 0.0])[:, None].expand(4, dim))
    assert torch.equal(
        split.image_rows(torch.tensor([5, 0]), torch.tensor([0, 0])),
        torch.stack([torch.arange(dim, dtype=torch.float32), torch.zeros(dim)]),
    )
    assert split.memory_mapped
    with pytest.raises((MemoryError, RuntimeError)):
        split.text  # noqa: B018  (1 TiB as float32 is refused at once)


def _small_store(tmp_path, shard_rows: int | None = 4) -> FeatureStore:
    g = torch.Generator().manual_seed(0)
    feats = SplitFeatures(torch.randn(6, 8, generator=g), torch.randn(12, 8, generator=g), torch.arange(12) // 2)
    folder = tmp_path / "store"
    folder.mkdir(parents=True)
    records = write_split(folder, "train", feats, "float16", shard_rows)
    write_manifest(folder, 8, {"train": (6, 12)}, {"train": records}, dtype="float16")
    return FeatureStore.open(folder)


def test_missing_shard_is_named_when_opened(tmp_path):
    store = _small_store(tmp_path)
    (store.path / "train-00001-of-00003.safetensors").unlink()
    with pytest.raises(DsmdError, match=r"train-00001-of-00003\.safetensors .*is missing.*dsmd extract --overwrite"):
        FeatureStore.open(store.path)


def test_truncated_shard_is_named_when_opened(tmp_path):
    store = _small_store(tmp_path)
    shard = store.path / "train-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DsmdError, match=r"train-00002-of-00003\.safetensors .*truncated.*Re-extract"):
        FeatureStore.open(store.path)


def test_truncated_legacy_file_and_corrupt_shard(tmp_path):
    store = _small_store(tmp_path, shard_rows=None)
    # a store written before the manifest listed its files: the header gives the size
    write_manifest(store.path, 8, {"train": (6, 12)}, None, teacher={"kind": "imported"}, dtype="float16")
    assert torch.equal(
        FeatureStore.open(store.path).split("train").text_rows(torch.tensor([3])),
        store.split("train").text_rows(torch.tensor([3])),
    )
    file = store.path / "train.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:-1])
    with pytest.raises(DsmdError, match=r"train\.safetensors .*truncated.*dsmd import-features --overwrite"):
        FeatureStore.open(store.path)
    # same size, other bytes: only the sha256 check sees it
    shutil_store = _small_store(tmp_path / "b")
    shard = shutil_store.path / "train-00000-of-00003.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    FeatureStore.open(shutil_store.path)
    with pytest.raises(DsmdError, match=r"train-00000-of-00003\.safetensors is corrupt"):
        FeatureStore.open(shutil_store.path).verify()


def test_training_runs_on_a_sharded_float16_store(tiny_overrides, tmp_path):
    from dsmd.training import train

    overrides = [*tiny_overrides, "store_shard_rows=5", "store_dtype=float16", "train.max_steps=2"]
    store = ex.extract(load_config(None, overrides), **QUIET)
    assert len(store.files("train")) == 5
    result = train(load_config(None, overrides), progress=False, log=lambda *_: None)
    assert Path(result.best_checkpoint).is_file()
