"""Chunked extraction: an extraction interrupted inside a split resumes to the very same store."""

from __future__ import annotations

import pytest
import torch

import dsmd.extraction.extractor as ex
from dsmd.cli import main
from dsmd.config import load_config
from dsmd.errors import DsmdError
from dsmd.store.feature_store import FeatureStore
from dsmd.teachers import build_teacher

QUIET = {"progress": False, "log": lambda *_: None}


class Interrupt(Exception):
    pass


def _counting_teacher(monkeypatch, fail_images_after=None, fail_texts_after=None) -> dict:
    """Patch ``build_teacher`` so the teacher counts its batches and raises after the given number."""
    calls = {"images": 0, "texts": 0}

    def build(cfg, device):
        teacher = build_teacher(cfg, device)
        encode_images, encode_texts = teacher.encode_images, teacher.encode_texts

        def images(pixels):
            if fail_images_after is not None and calls["images"] >= fail_images_after:
                raise Interrupt
            calls["images"] += 1
            return encode_images(pixels)

        def texts(captions):
            if fail_texts_after is not None and calls["texts"] >= fail_texts_after:
                raise Interrupt
            calls["texts"] += 1
            return encode_texts(captions)

        teacher.encode_images, teacher.encode_texts = images, texts
        return teacher

    monkeypatch.setattr(ex, "build_teacher", build)
    return calls


def test_interrupted_inside_a_split_resumes_byte_identical(tiny_overrides, tmp_path, monkeypatch):
    # train: 12 images in chunks of 5, 5, 2 (batches of 2: a chunk ends with a batch of 1),
    # 24 captions in chunks of 5 x 4 + 4; one augmented view per training image
    monkeypatch.setattr(ex, "CHUNK_SIZE", 5)
    overrides = [*tiny_overrides, "teacher.batch_size=2", "store_views=1"]
    reference = ex.extract(load_config(None, [*overrides, f"store={tmp_path / 'reference'}"]), **QUIET)
    cfg = load_config(None, overrides)
    partial = tmp_path / "store.partial"

    # 1) stopped inside the train images: chunk 0 (3 batches) is on disk, chunk 1 is not
    _counting_teacher(monkeypatch, fail_images_after=4)
    with pytest.raises(Interrupt):
        ex.extract(cfg, **QUIET)
    assert sorted(p.name for p in (partial / "chunks" / "train").iterdir()) == ["image-00000.safetensors"]
    with pytest.raises(DsmdError, match="interrupted"):
        FeatureStore.open(tmp_path / "store")

    # 2) resumed, and stopped again inside the train captions (after 3 of 5 caption chunks)
    calls = _counting_teacher(monkeypatch, fail_texts_after=3 * 3)
    messages = []
    with pytest.raises(Interrupt):
        ex.extract(cfg, progress=False, log=messages.append)
    assert "train: resuming from 1 finished chunks" in messages
    assert calls["images"] == 3 + 1  # chunks 1 and 2 only: batches 2+2+1 and 2
    assert len(list((partial / "chunks" / "train").glob("text-*.safetensors"))) == 3

    # 3) resumed to the end: only the missing chunks run, and the store is the uninterrupted one
    calls = _counting_teacher(monkeypatch)
    store = ex.extract(cfg, **QUIET)
    assert calls["texts"] == 3 + 2 + 2 * (3 + 3 + 1)  # train caption chunks 3, 4; val, test: 12 captions = 5+5+2
    assert not partial.exists()
    for split in ("train", "val", "test"):
        assert (store.path / f"{split}.safetensors").read_bytes() == (
            reference.path / f"{split}.safetensors"
        ).read_bytes(), split
    assert store.split("train").image_views.shape == (12, 1, 24)
    volatile = ("created", "seconds", "checksum")  # when and how fast it was written (and the seal over those)
    assert {k: v for k, v in store.manifest.items() if k not in volatile} == {
        k: v for k, v in reference.manifest.items() if k not in volatile
    }


def test_chunks_of_another_size_are_recomputed(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "CHUNK_SIZE", 5)
    cfg = load_config(None, [*tiny_overrides, "teacher.batch_size=4"])
    _counting_teacher(monkeypatch, fail_texts_after=2)
    with pytest.raises(Interrupt):
        ex.extract(cfg, **QUIET)
    monkeypatch.setattr(ex, "CHUNK_SIZE", 7)
    calls = _counting_teacher(monkeypatch)
    store = ex.extract(cfg, **QUIET)
    assert calls["images"] == 2 + 2 + 2 + 2  # train 7 + 5, val 6, test 6: nothing reused
    uninterrupted = ex.teacher_features(
        build_teacher(cfg.teacher, "cpu"),
        ex.load_dataset(cfg.data)["train"],
        4,
        True,
        torch.device("cpu"),
        progress=False,
    )
    torch.testing.assert_close(store.split("train").image, uninterrupted.image)
    torch.testing.assert_close(store.split("train").text, uninterrupted.text)


def test_rebuild_message_fits_where_it_is_raised(tiny_overrides, tmp_path, capsys):
    cfg = load_config(None, tiny_overrides)
    ex.extract(cfg, **QUIET)
    other = load_config(None, [*tiny_overrides, "teacher.normalize=false"])
    # the library (and so `dsmd demo`, which has no --overwrite) names the folder and the command
    with pytest.raises(DsmdError, match=rf"built differently.*delete {tmp_path / 'store'} .*dsmd extract --overwrite"):
        ex.extract(other, **QUIET)
    with pytest.raises(SystemExit):
        main(["extract", "--quiet", *tiny_overrides, "teacher.normalize=false"])
    err = capsys.readouterr().err
    assert "Pass --overwrite to replace it" in err and "delete" not in err
