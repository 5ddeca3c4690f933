"""An image the data assigns two different splits is refused, not moved to the last one."""

import json

import pytest
from PIL import Image

from dsmd.config import DataConfig
from dsmd.data.datasets import load_dataset
from dsmd.errors import DsmdError


def _jsonl(tmp_path, rows: list[dict]) -> DataConfig:
    for name in ("a.png", "b.png"):
        Image.new("RGB", (10, 10)).save(tmp_path / name)
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return DataConfig(kind="manifest", manifest=str(tmp_path / "m.jsonl"))


def test_an_image_under_two_splits_is_refused(tmp_path):
    cfg = _jsonl(
        tmp_path,
        [
            {"image": "a.png", "caption": "a one", "split": "train"},
            {"image": "b.png", "caption": "b one", "split": "test"},
            {"image": "a.png", "caption": "a two", "split": "test"},
        ],
    )
    with pytest.raises(DsmdError) as info:
        load_dataset(cfg)
    assert str(info.value) == (
        f"image {tmp_path / 'a.png'} in {tmp_path / 'm.jsonl'} is listed under two splits, 'train' and 'test'. "
        "Give each image one split (remove or fix one of its entries)."
    )


def test_aliases_of_one_split_agree(tmp_path):
    cfg = _jsonl(
        tmp_path,
        [
            {"image": "a.png", "caption": "a one", "split": "restval"},
            {"image": "b.png", "caption": "b one", "split": "validation"},
            {"image": "a.png", "caption": "a two", "split": "train"},
            {"image": "b.png", "caption": "b two", "split": "val"},
        ],
    )
    splits = load_dataset(cfg)
    assert splits["train"].captions == ["a one", "a two"] and splits["val"].captions == ["b one", "b two"]


def test_a_karpathy_image_listed_twice_with_two_splits_is_refused(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "1.jpg")
    entry = {"filename": "1.jpg", "split": "val", "sentences": [{"raw": "a caption"}]}
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": [entry, entry | {"split": "restval"}]}))
    with pytest.raises(
        DsmdError,
        match=r"1.jpg in .*dataset_flickr30k.json is listed under two splits, 'val' and "
        r"'restval'",
    ):
        load_dataset(DataConfig(kind="karpathy", manifest=str(path)))
