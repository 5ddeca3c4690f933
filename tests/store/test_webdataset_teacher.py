"""Teacher features written into copies of webdataset shards, beside each sample's image."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dsmd.config import DataConfig, load_config
from dsmd.data.datasets import load_dataset
from dsmd.errors import DsmdError
from dsmd.extraction.extractor import extract
from dsmd.extraction.webdataset_teacher import write_teacher_shards
from dsmd.runtime.lock import acquire_folder

QUIET = {"progress": False, "log": lambda *_: None}


def _write_shards(manifest: str, folder: Path) -> list[str]:
    import webdataset as wds

    splits = load_dataset(DataConfig(kind="manifest", manifest=manifest, val_fraction=0.25, test_fraction=0.25))
    folder.mkdir()
    for split, data in splits.items():
        with wds.TarWriter(str(folder / f"{split}-000000.tar")) as sink:
            for row in range(data.num_images):
                caps = [c for c, r in zip(data.captions, data.caption_image, strict=True) if r == row]
                sink.write(
                    {"__key__": f"{row:06d}", "png": Path(data.image_paths[row]).read_bytes(), "txt": "\n".join(caps)}
                )
            sink.write({"__key__": "broken", "txt": "no image here"})  # skipped by dsmd: no teacher members
    return ["data.kind=webdataset", f"data.manifest={folder}"]


def test_teacher_features_travel_in_the_shards(tiny_overrides, synthetic_manifest, tmp_path):
    import webdataset as wds

    data = _write_shards(synthetic_manifest, tmp_path / "shards")
    overrides = (
        [o for o in tiny_overrides if not o.startswith("data.")]
        + data
        + ["store_views=1", "store_dtype=float16", "store_shard_rows=7"]
    )
    cfg = load_config(None, overrides)
    store = extract(cfg, **QUIET)
    copies = write_teacher_shards(cfg, tmp_path / "with_teacher", log=lambda *_: None)
    assert [p.name for p in copies] == ["test-000000.tar", "train-000000.tar", "val-000000.tar"]

    dataset = load_dataset(cfg.data)
    for copy in copies:
        split = copy.name.split("-")[0]
        feats, listed = store.split(split), dataset[split]
        original = tarfile.open(tmp_path / "shards" / copy.name)
        names = tarfile.open(copy).getnames()
        # every original member, in order, each sample followed by its teacher members
        assert [n for n in names if ".teacher_" not in n] == original.getnames()
        added = ["image", "text", "views"] if split == "train" else ["image", "text"]
        after = names.index("000000.txt") + 1
        assert names[after : after + len(added) + 1] == [*(f"000000.teacher_{a}.npy" for a in added), "000001.png"]
        assert not any(n.startswith("broken.teacher") for n in names)
        samples = [s for s in wds.WebDataset(str(copy), shardshuffle=False).decode() if s["__key__"] != "broken"]
        assert len(samples) == feats.num_images
        for row, sample in enumerate(samples):
            assert sample["png"] is not None and sample["teacher_image.npy"].dtype == np.float16
            assert torch.equal(torch.from_numpy(sample["teacher_image.npy"].astype(np.float32)), feats.image[row])
            caps = [j for j, r in enumerate(listed.caption_image) if r == row]
            assert sample["txt"].splitlines() == [listed.captions[j] for j in caps]
            assert torch.equal(torch.from_numpy(sample["teacher_text.npy"].astype(np.float32)), feats.text[caps])
            if split == "train":  # the store's one augmented view
                views = torch.from_numpy(sample["teacher_views.npy"].astype(np.float32))
                assert views.shape == (1, 24) and torch.equal(views, feats.image_views[row])
            else:
                assert "teacher_views.npy" not in sample
            member = original.extractfile(f"{row:06d}.png").read()
            assert tarfile.open(copy).extractfile(f"{row:06d}.png").read() == member

    # the copies are a dataset of their own (the same samples), and copying them again
    # replaces their teacher members instead of adding more
    again = load_config(
        None, [*overrides, f"data.manifest={tmp_path / 'with_teacher'}", f"store={tmp_path / 'store2'}"]
    )
    assert load_dataset(again.data)["train"].captions == dataset["train"].captions
    extract(again, **QUIET)
    second = write_teacher_shards(again, tmp_path / "twice", log=lambda *_: None)
    assert tarfile.open(second[1]).getnames() == tarfile.open(copies[1]).getnames()
    with pytest.raises(DsmdError, match="another folder"):
        write_teacher_shards(cfg, tmp_path / "shards")
    before = {p: p.read_bytes() for p in (tmp_path / "twice").iterdir()}
    with acquire_folder(tmp_path / "twice", "out_dir"):  # another writer of those copies
        with pytest.raises(DsmdError, match=f"out_dir={tmp_path / 'twice'} is in use by another dsmd command"):
            write_teacher_shards(again, tmp_path / "twice", log=lambda *_: None)
    assert {p: p.read_bytes() for p in (tmp_path / "twice").iterdir()} == before
