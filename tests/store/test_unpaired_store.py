"""Pools of unpaired data in the feature store: the manifest's ``unpaired`` tables, extraction
into them (reuse, extension of a store without them, refusal of another pool, resume after an
interruption, stale chunks of a changed pool), and torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dsmd.extraction.extractor as ex
from dsmd.config import load_config
from dsmd.data.synthetic import write_synthetic_dataset
from dsmd.errors import DsmdError
from dsmd.store.feature_store import FeatureStore
from dsmd.store.manifest import read_manifest
from store_helpers import write_manifest

QUIET = {"progress": False, "log": lambda *_: None}
CAPTIONS = ["red and blue", "a purple cross", "the orange triangle", "black square drawing", "white circle"]


class Interrupt(Exception):
    pass


@pytest.fixture
def pools(tmp_path) -> dict[str, list[str]]:
    """Overrides naming an image pool (7 drawings) and a caption pool (5 captions)."""
    folder = tmp_path / "pool"
    write_synthetic_dataset(folder, num_images=7, captions_per_image=1, size=32, seed=3)
    (tmp_path / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    return {
        "image": ["data.unpaired_images.kind=folder", f"data.unpaired_images.path={folder}"],
        "text": ["data.unpaired_texts.kind=lines", f"data.unpaired_texts.path={tmp_path / 'captions.txt'}"],
    }


def _digests(store: FeatureStore) -> dict[str, list[str]]:
    return {name: [r["sha256"] for r in store.files(name)] for name in store.tables()}


def test_the_manifest_lists_pool_tables_and_refuses_unknown_ones(tmp_path):
    record = {"file": "unpaired_text.safetensors", "images": [0, 0], "captions": [0, 3]}
    unpaired = {"unpaired_text": {"fingerprint": "f", "num_images": 0, "num_captions": 3}}
    write_manifest(tmp_path, 4, {"train": (1, 1)}, {"unpaired_text": [record]}, unpaired=unpaired)
    assert read_manifest(tmp_path / "manifest.json", "")["unpaired"] == unpaired
    write_manifest(tmp_path, 4, {"train": (1, 1)}, None, unpaired={"unpaired_audio": unpaired["unpaired_text"]})
    with pytest.raises(DsmdError, match="unknown pool table 'unpaired_audio'"):
        read_manifest(tmp_path / "manifest.json", "")
    write_manifest(tmp_path, 4, {"train": (1, 1)}, {"unpaired_text": [record]})
    with pytest.raises(DsmdError, match="'files' lists split 'unpaired_text'"):
        read_manifest(tmp_path / "manifest.json", "")


@pytest.mark.e2e
def test_pools_are_extracted_and_a_store_without_them_is_extended(tiny_overrides, pools, tmp_path):
    both = [*tiny_overrides, *pools["image"], *pools["text"]]
    reference = ex.extract(load_config(None, [*both, f"store={tmp_path / 'reference'}"]), **QUIET)
    assert reference.tables() == ["train", "val", "test", "unpaired_image", "unpaired_text"]
    images, texts = reference.split("unpaired_image"), reference.split("unpaired_text")
    assert (images.num_images, images.num_captions, texts.num_images, texts.num_captions) == (7, 0, 0, 5)
    torch.testing.assert_close(texts.text.norm(dim=1), torch.ones(5))
    assert texts.caption_image.tolist() == [-1] * 5  # no image

    plain = ex.extract(load_config(None, tiny_overrides), **QUIET)  # a store without pools
    train_file = tmp_path / "store" / plain.files("train")[0]["file"]
    inode = os.stat(train_file).st_ino
    messages = []
    extended = ex.extract(load_config(None, [*tiny_overrides, *pools["image"]]), progress=False, log=messages.append)
    assert any("extending feature store" in m for m in messages)
    assert extended.tables() == ["train", "val", "test", "unpaired_image"]
    assert os.stat(tmp_path / "store" / train_file.name).st_ino == inode  # the splits were linked, not encoded
    extended = ex.extract(load_config(None, both), **QUIET)  # the captions too; the images are kept
    assert _digests(extended) == _digests(reference)
    assert extended.verify(force=True) > 0
    assert not (tmp_path / "store.partial").exists()

    messages = []
    again = ex.extract(load_config(None, tiny_overrides), progress=False, log=messages.append)  # no pools: as it is
    assert "up to date" in messages[0] and again.tables() == extended.tables()
    other = [*tiny_overrides, *pools["image"], "data.unpaired_images.limit=3"]
    with pytest.raises(DsmdError, match="built differently.*unpaired_image"):
        ex.extract(load_config(None, other), **QUIET)
    rebuilt = ex.extract(load_config(None, other), overwrite=True, **QUIET)
    assert rebuilt.tables() == ["train", "val", "test", "unpaired_image"]
    assert rebuilt.split("unpaired_image").num_images == 3


@pytest.mark.e2e
def test_an_interrupted_pool_extraction_resumes_and_a_changed_pool_starts_again(
    tiny_overrides, pools, tmp_path, monkeypatch
):
    monkeypatch.setattr(ex, "CHUNK_SIZE", 3)  # the image pool: chunks of 3, 3, 1
    overrides = [*tiny_overrides, *pools["image"], "teacher.batch_size=2"]
    reference = ex.extract(load_config(None, [*overrides, f"store={tmp_path / 'reference'}"]), **QUIET)
    save = ex._Chunks.save

    def save_then_stop(self, k, features):
        save(self, k, features)
        if self.folder.name == "unpaired_image" and k == 1:
            raise Interrupt

    def interrupted(store: str) -> None:
        monkeypatch.setattr(ex._Chunks, "save", save_then_stop)
        with pytest.raises(Interrupt):
            ex.extract(load_config(None, [*overrides, f"store={tmp_path / store}"]), **QUIET)
        chunks = tmp_path / f"{store}.partial" / "chunks" / "unpaired_image"
        assert sorted(p.name for p in chunks.iterdir()) == ["image-00000.safetensors", "image-00001.safetensors"]
        monkeypatch.setattr(ex._Chunks, "save", save)

    interrupted("store")
    messages = []
    store = ex.extract(load_config(None, overrides), progress=False, log=messages.append)
    assert "unpaired_image: resuming from 2 finished chunks" in messages
    assert _digests(store) == _digests(reference)

    # The same pool listed in reverse order: another fingerprint, so the chunks saved are not reused.
    interrupted("again")
    paths = [json.dumps({"image": p}) for p in _pool_paths(pools)]
    (tmp_path / "reversed.jsonl").write_text("\n".join(reversed(paths)) + "\n")
    changed = [
        *tiny_overrides,
        "data.unpaired_images.kind=jsonl",
        f"data.unpaired_images.path={tmp_path / 'reversed.jsonl'}",
        "teacher.batch_size=2",
    ]
    changed_reference = ex.extract(load_config(None, [*changed, f"store={tmp_path / 'changed'}"]), **QUIET)
    store = ex.extract(load_config(None, [*changed, f"store={tmp_path / 'again'}"]), **QUIET)
    assert _digests(store) == _digests(changed_reference) != _digests(reference)


def _pool_paths(pools: dict[str, list[str]]) -> list[str]:
    from dsmd.data.unpaired import load_pools

    return load_pools(load_config(None, pools["image"]).data)["image"].image_paths


@pytest.mark.e2e
def test_two_processes_extract_the_pools_and_one_resumes_after_a_rank_dies(tiny_overrides, pools, tmp_path):
    overrides = [*tiny_overrides, *pools["image"], *pools["text"], "teacher.batch_size=2"]
    reference = ex.extract(load_config(None, [*overrides, f"store={tmp_path / 'reference'}"]), **QUIET)
    helper = Path(__file__).with_name("_torchrun_extract.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DSMD_TEST_CHUNK_SIZE": "3"}
    env.update(DSMD_TEST_DIE_RANK="1", DSMD_TEST_DIE_AFTER="9")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(helper)]
    run = subprocess.run([*cmd, "extract", "--quiet", *overrides], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode != 0 and (tmp_path / "store.partial" / "pending.json").is_file()
    monkey = pytest.MonkeyPatch()
    monkey.setattr(ex, "CHUNK_SIZE", 3)
    try:
        store = ex.extract(load_config(None, overrides), **QUIET)
    finally:
        monkey.undo()
    assert store.tables() == reference.tables()
    for name in ("unpaired_image", "unpaired_text"):
        a, b = store.split(name), reference.split(name)
        torch.testing.assert_close(a.image, b.image, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.text, b.text, rtol=1e-5, atol=1e-6)
