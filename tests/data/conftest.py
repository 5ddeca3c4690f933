"""Fixtures: small datasets in the real formats (see format_writers.py)."""

from __future__ import annotations

import pytest
from format_writers import captions_of, image_bytes, write_image_files, write_karpathy, write_shards


@pytest.fixture
def flickr_karpathy(tmp_path) -> dict:
    return write_karpathy(tmp_path, "flickr")


@pytest.fixture
def coco_karpathy(tmp_path) -> dict:
    return write_karpathy(tmp_path, "coco")


@pytest.fixture
def hf_dataset_dict(tmp_path) -> dict:
    """``DatasetDict.save_to_disk``: train (4 images), validation (2), test (2); an ``Image``
    feature built from PNG files (save_to_disk embeds the bytes) and a list of 3 captions."""
    import datasets

    files = write_image_files(tmp_path / "png", range(8))
    splits = {"train": range(4), "validation": range(4, 6), "test": range(6, 8)}
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string"))})
    dd = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict(
                {"image": [str(files[i]) for i in ids], "caption": [captions_of(i, 3) for i in ids]}, features=features
            )
            for name, ids in splits.items()
        }
    )
    folder = tmp_path / "hf_dd"
    dd.save_to_disk(str(folder))
    return {"folder": folder, "files": files}


@pytest.fixture
def hf_parquet(tmp_path) -> dict:
    """Hub-like parquet: embedded JPEG bytes, 5 captions a row, a ``split`` column, two files of
    row groups of 2 rows."""
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Sequence(datasets.Value("string")),
            "split": datasets.Value("string"),
            "filename": datasets.Value("string"),
        }
    )
    split_of = {0: "train", 1: "train", 2: "val", 3: "test", 4: "train", 5: "train", 6: "test", 7: "train"}
    folder = tmp_path / "parquet"
    folder.mkdir()
    for part, ids in enumerate((range(0, 5), range(5, 8))):
        ds = datasets.Dataset.from_dict(
            {
                "image": [{"bytes": image_bytes(i, "JPEG"), "path": f"{i}.jpg"} for i in ids],
                "caption": [captions_of(i) for i in ids],
                "split": [split_of[i] for i in ids],
                "filename": [f"{i}.jpg" for i in ids],
            },
            features=features,
        )
        ds.to_parquet(str(folder / f"part-{part}.parquet"), batch_size=2)
    return {"folder": folder, "split_of": split_of}


@pytest.fixture
def shards(tmp_path) -> dict:
    return write_shards(tmp_path / "shards")
