import json
from pathlib import Path

import pytest
from format_writers import captions_of, image_of

from dsmd.config import DataConfig
from dsmd.data.datasets import load_dataset, load_split
from dsmd.errors import DsmdError


def _cfg(fixture) -> DataConfig:
    return DataConfig(kind="karpathy", manifest=str(fixture["json"]), root=str(fixture["root"]))


def _check_grouping(data):
    for caption, row in zip(data.captions, data.caption_image, strict=True):
        assert Path(data.image_paths[row]).name.endswith(f"{image_of(caption)}.jpg")


def test_flickr30k_layout_keeps_karpathy_splits_in_file_order(flickr_karpathy):
    splits = load_dataset(_cfg(flickr_karpathy))
    counts = {k: (v.num_images, len(v)) for k, v in splits.items()}
    assert counts == {"train": (5, 25), "val": (2, 10), "test": (3, 15)}
    test = splits["test"]
    root = flickr_karpathy["root"]
    assert test.image_paths == [str(root / f"{1000 + i}.jpg") for i in (7, 8, 9)]
    assert test.captions == [c for i in (7, 8, 9) for c in captions_of(i)]  # "raw" stripped
    assert test.caption_image == [r for r in range(3) for _ in range(5)]
    for data in splits.values():
        _check_grouping(data)


def test_coco_layout_restval_goes_to_train_and_extra_sentences_are_kept(coco_karpathy):
    splits = load_dataset(_cfg(coco_karpathy))
    counts = {k: (v.num_images, len(v)) for k, v in splits.items()}
    assert counts == {"train": (4, 20), "val": (1, 5), "test": (3, 17)}
    root = coco_karpathy["root"]
    assert splits["train"].image_paths[:3] == [
        str(root / "train2014" / "COCO_train2014_000000000020.jpg"),
        str(root / "train2014" / "COCO_train2014_000000000021.jpg"),
        str(root / "val2014" / "COCO_val2014_000000000022.jpg"),
    ]
    test = splits["test"]
    assert [test.caption_image.count(r) for r in range(3)] == [5, 5, 7]
    assert test.captions[-7:] == captions_of(33, 7)
    for data in splits.values():
        _check_grouping(data)


def test_eval_captions_per_image_gives_the_5k_protocol(coco_karpathy):
    cfg = _cfg(coco_karpathy)
    cfg.eval_captions_per_image = 5
    splits = load_dataset(cfg)
    test = splits["test"]
    assert [test.caption_image.count(r) for r in range(3)] == [5, 5, 5]
    assert test.captions[-5:] == captions_of(33, 7)[:5]  # the first five, in file order
    assert len(splits["train"]) == len(load_dataset(_cfg(coco_karpathy))["train"])  # train keeps all
    cfg.eval_captions_per_image = 0
    with pytest.raises(DsmdError, match="eval_captions_per_image"):
        load_dataset(cfg)


def test_root_defaults_to_the_json_folder(flickr_karpathy):
    folder = flickr_karpathy["json"].parent
    images = json.loads(flickr_karpathy["json"].read_text())
    for image in images["images"]:
        image["filepath"] = "flickr30k-images"
    flickr_karpathy["json"].write_text(json.dumps(images))
    data = load_split(DataConfig(kind="karpathy", manifest=str(flickr_karpathy["json"])), "val")
    assert data.image_paths[0] == str(folder / "flickr30k-images" / "1005.jpg")


def test_missing_image_names_the_json_file_the_path_and_the_count(flickr_karpathy):
    root = flickr_karpathy["root"]
    (root / "1003.jpg").unlink()
    (root / "1008.jpg").unlink()
    with pytest.raises(DsmdError) as info:
        load_dataset(_cfg(flickr_karpathy))
    message = str(info.value)
    assert "dataset_flickr30k.json" in message and str(root / "1003.jpg") in message
    assert "2 of 10 images" in message


def test_not_a_karpathy_file_and_missing_splits(flickr_karpathy, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"annotations": []}))
    with pytest.raises(DsmdError, match="not a Karpathy split file"):
        load_dataset(DataConfig(kind="karpathy", manifest=str(other)))
    with pytest.raises(DsmdError, match="unknown split 'dev'"):
        load_split(_cfg(flickr_karpathy), "dev")
    content = json.loads(flickr_karpathy["json"].read_text())
    for image in content["images"]:
        image["split"] = "train" if image["split"] == "val" else image["split"]
    flickr_karpathy["json"].write_text(json.dumps(content))
    with pytest.raises(DsmdError, match="split 'val' of karpathy is empty.*assigns no image"):
        load_split(_cfg(flickr_karpathy), "val")
    content["images"][0]["split"] = "holdout"
    flickr_karpathy["json"].write_text(json.dumps(content))
    with pytest.raises(DsmdError, match="unknown split 'holdout'"):
        load_dataset(_cfg(flickr_karpathy))
    with pytest.raises(DsmdError, match="needs data.manifest"):
        load_dataset(DataConfig(kind="karpathy"))


def test_fingerprint_is_stable_and_follows_captions(flickr_karpathy):
    cfg = _cfg(flickr_karpathy)
    before = load_split(cfg, "test").fingerprint()
    assert load_split(cfg, "test").fingerprint() == before
    content = json.loads(flickr_karpathy["json"].read_text())
    content["images"][-1]["sentences"][0]["raw"] = "a changed caption"
    flickr_karpathy["json"].write_text(json.dumps(content))
    assert load_split(cfg, "test").fingerprint() != before
