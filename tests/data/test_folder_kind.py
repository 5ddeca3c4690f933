"""data.kind=folder: images with NAME.txt captions beside them."""

from __future__ import annotations

import pytest
from PIL import Image

from dsmd.config import DataConfig
from dsmd.data.datasets import load_dataset
from dsmd.errors import DsmdError


def _photo(path, captions: str | None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 200, 30)).save(path)
    if captions is not None:
        path.with_suffix(".txt").write_text(captions, encoding="utf-8")


def test_every_caption_line_of_every_image_under_the_root(tmp_path):
    _photo(tmp_path / "a.jpg", "a green square\n\nthe same square, twice\n")
    _photo(tmp_path / "trips" / "b.png", "a second picture")
    _photo(tmp_path / "skip" / "c.png", "excluded")
    data = load_dataset(
        DataConfig(kind="folder", root=str(tmp_path), exclude=["skip"], val_fraction=0, test_fraction=0)
    )["train"]
    assert data.num_images == 2 and len(data) == 3
    assert sorted(data.captions) == ["a green square", "a second picture", "the same square, twice"]


def test_an_image_without_captions_is_named(tmp_path):
    _photo(tmp_path / "a.jpg", "fine")
    _photo(tmp_path / "b.jpg", None)
    with pytest.raises(DsmdError, match=r"1 of the 2 images .* have no caption file, e\.g\. .*b\.jpg"):
        load_dataset(DataConfig(kind="folder", root=str(tmp_path)))
    (tmp_path / "b.txt").write_text("\n\n")
    with pytest.raises(DsmdError, match="b.txt holds no caption"):
        load_dataset(DataConfig(kind="folder", root=str(tmp_path)))


def test_an_empty_or_missing_folder(tmp_path):
    with pytest.raises(DsmdError, match="no images under"):
        load_dataset(DataConfig(kind="folder", root=str(tmp_path)))
    with pytest.raises(DsmdError, match="is not a folder"):
        load_dataset(DataConfig(kind="folder", root=str(tmp_path / "none")))


def test_the_packaged_config_for_ones_own_photos_loads():
    from dsmd.config import load_config

    cfg = load_config("folder", ["data.root=/somewhere"])
    assert cfg.data.kind == "folder" and cfg.data.root == "/somewhere" and cfg.teacher.kind == "offline"
