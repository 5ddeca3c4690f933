import io

import numpy as np
import pytest
from format_writers import captions_of, image_bytes, image_of, make_image, write_image_files
from PIL import Image

from dsmd.config import DataConfig
from dsmd.data.datasets import load_dataset, load_split
from dsmd.data.images import load_image, parse_ref
from dsmd.errors import DsmdError


def _check_grouping(data):
    """All captions of a row name one image, and no two rows name the same image."""
    number_of_row = {}
    for caption, row in zip(data.captions, data.caption_image, strict=True):
        assert number_of_row.setdefault(row, image_of(caption)) == image_of(caption)
    assert len(set(number_of_row.values())) == data.num_images


def test_dataset_dict_splits_and_embedded_images(hf_dataset_dict):
    cfg = DataConfig(kind="hf", manifest=str(hf_dataset_dict["folder"]))
    splits = load_dataset(cfg)
    assert {k: (v.num_images, len(v)) for k, v in splits.items()} == {"train": (4, 12), "val": (2, 6), "test": (2, 6)}
    val = splits["val"]
    assert val.captions == captions_of(4, 3) + captions_of(5, 3) and val.caption_image == [0, 0, 0, 1, 1, 1]
    ref = parse_ref(val.image_paths[1])
    assert ref.container.endswith("validation/data-00000-of-00001.arrow") and (ref.row, ref.column) == (1, "image")
    for data in splits.values():
        _check_grouping(data)
        for row, path in enumerate(data.image_paths):
            number = image_of(data.captions[data.caption_image.index(row)])
            original = load_image(hf_dataset_dict["files"][number])
            assert np.array_equal(np.asarray(load_image(path)), np.asarray(original))


def test_parquet_split_column_row_groups_and_fingerprint(hf_parquet):
    folder = hf_parquet["folder"]
    for manifest in (folder, folder / "*.parquet"):
        cfg = DataConfig(kind="hf", manifest=str(manifest))
        splits = load_dataset(cfg)
        expected = {s: sorted(i for i, v in hf_parquet["split_of"].items() if v == s) for s in ("train", "val", "test")}
        for split, data in splits.items():
            numbers = [image_of(data.captions[data.caption_image.index(r)]) for r in range(data.num_images)]
            assert numbers == expected[split] and len(data) == 5 * len(numbers)
            for row, path in enumerate(data.image_paths):
                # each reference decodes to its own image (rows beyond the first row group too)
                original = Image.open(io.BytesIO(image_bytes(numbers[row], "JPEG"))).convert("RGB")
                assert np.array_equal(np.asarray(load_image(path)), np.asarray(original))
    train = load_split(cfg, "train")
    assert parse_ref(train.image_paths[-1]).container.endswith("part-1.parquet")
    assert parse_ref(train.image_paths[-1]).row == 2
    assert load_split(cfg, "train").fingerprint() == train.fingerprint()


def test_one_caption_per_row_with_file_paths_is_grouped_and_seeded(tmp_path):
    import datasets

    files = write_image_files(tmp_path / "img", range(10))
    rows = [(i, c) for i in range(10) for c in captions_of(i, 2)]
    ds = datasets.Dataset.from_dict(
        {"picture": [str(files[i]) for i, _ in rows], "text": [c for _, c in rows]},
        features=datasets.Features({"picture": datasets.Image(), "text": datasets.Value("string")}),
    )
    ds.to_parquet(str(tmp_path / "pairs.parquet"))  # external files: paths, no bytes
    cfg = DataConfig(
        kind="hf",
        manifest=str(tmp_path / "pairs.parquet"),
        image_column="picture",
        caption_column="text",
        val_fraction=0.2,
        test_fraction=0.2,
    )
    splits = load_dataset(cfg)
    assert [splits[k].num_images for k in ("train", "val", "test")] == [6, 2, 2]
    assert all(len(s) == 2 * s.num_images for s in splits.values())
    assert sorted(p for s in splits.values() for p in s.image_paths) == sorted(str(p) for p in files.values())
    for data in splits.values():
        for caption, row in zip(data.captions, data.caption_image, strict=True):
            assert data.image_paths[row] == str(files[image_of(caption)])


def test_one_caption_per_row_with_embedded_bytes_groups_by_path(tmp_path):
    import datasets

    rows = [(i, c) for i in range(4) for c in captions_of(i, 3)]
    ds = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": image_bytes(i, "PNG"), "path": f"{i}.png"} for i, _ in rows],
            "caption": [c for _, c in rows],
            "split": ["test" if i == 3 else "train" for i, _ in rows],
        }
    )
    ds = ds.cast_column("image", datasets.Image())  # embedded bytes, kept by save_to_disk
    ds.save_to_disk(str(tmp_path / "ds"))
    test = load_split(DataConfig(kind="hf", manifest=str(tmp_path / "ds")), "test")
    assert test.num_images == 1 and test.captions == captions_of(3, 3) and test.caption_image == [0, 0, 0]
    assert np.array_equal(np.asarray(load_image(test.image_paths[0])), np.asarray(make_image(3)))


def test_missing_columns_are_named_with_the_available_ones(hf_dataset_dict, hf_parquet):
    with pytest.raises(
        DsmdError,
        match=r"no column 'x'; its columns are: image, caption, split, filename\. "
        r"Set data.caption_column",
    ):
        load_dataset(DataConfig(kind="hf", manifest=str(hf_parquet["folder"]), caption_column="x"))
    with pytest.raises(DsmdError, match=r"no column 'img'; its columns are: image, caption\. Set data.image_column"):
        load_dataset(DataConfig(kind="hf", manifest=str(hf_dataset_dict["folder"]), image_column="img"))
    with pytest.raises(DsmdError, match="Hugging Face dataset not found"):
        load_dataset(DataConfig(kind="hf", manifest=str(hf_parquet["folder"] / "none-*.parquet")))


def test_parquet_mixing_embedded_and_external_images(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = write_image_files(tmp_path / "img", range(6))
    cells = [{"bytes": image_bytes(i) if i % 2 else None, "path": files[i].name} for i in range(6)]
    table = pa.table({"image": cells, "caption": [captions_of(i, 2) for i in range(6)]})
    pq.write_table(table, tmp_path / "mixed.parquet", row_group_size=4)  # groups: mixed, then mixed
    data = load_split(
        DataConfig(
            kind="hf",
            manifest=str(tmp_path / "mixed.parquet"),
            root=str(tmp_path / "img"),
            val_fraction=0,
            test_fraction=0,
        ),
        "train",
    )
    assert [parse_ref(p) is not None for p in data.image_paths] == [False, True] * 3
    assert data.image_paths[0] == str(files[0])
    for row, path in enumerate(data.image_paths):
        assert np.array_equal(np.asarray(load_image(path)), np.asarray(make_image(row)))
