import json

import pytest
import torch
from PIL import Image

from dsmd.config import DataConfig
from dsmd.data.batches import PairCollator
from dsmd.data.datasets import load_dataset, load_split
from dsmd.data.loader import ImageCache, PairDataset
from dsmd.data.synthetic import write_synthetic_dataset
from dsmd.data.transforms import ImageTransform, load_image
from dsmd.errors import DsmdError
from pair_helpers import IndexTargets, count_words


def _stamps(root):
    """A miniature Tux Paint stamps tree: captions in NAME.txt, nested excluded folders."""
    layout = {
        "animals/birds/hen": "A brown hen.",
        "animals/fish/trout": "A coral trout.",
        "food/fruit/apple": "A red apple.",
        "food/fruit/cartoon/pear": "A cartoon pear.",
        "symbols/star": "A star.",
        "town/car": "A car.",
        "town/bus": "A bus.",
        "town/bike": "A bike.",
        "plants/tree": "A tree.",
        "plants/rose": "A rose.",
    }
    for name, caption in layout.items():
        png = root / f"{name}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGBA", (20, 30), (255, 0, 0, 128)).save(png)
        png.with_suffix(".txt").write_text(f"{caption}\nfr.utf8=Une traduction.\n")
    Image.new("RGB", (8, 8)).save(root / "town" / "car_mirror.png")  # no caption: skipped
    return root


def test_tuxpaint_listing_excludes_nested_folders_and_splits_by_image(tmp_path):
    root = _stamps(tmp_path / "stamps")
    cfg = DataConfig(root=str(root), val_fraction=0.125, test_fraction=0.25)
    splits = load_dataset(cfg)
    all_caps = sum((s.captions for s in splits.values()), [])
    assert sorted(all_caps) == sorted(
        ["A brown hen.", "A coral trout.", "A red apple.", "A car.", "A bus.", "A bike.", "A tree.", "A rose."]
    )
    images = [p for s in splits.values() for p in s.image_paths]
    assert len(images) == len(set(images)) == 8
    assert [splits[k].num_images for k in ("train", "val", "test")] == [5, 1, 2]
    again = load_dataset(cfg)
    assert all(again[k].image_paths == splits[k].image_paths for k in splits)
    other = load_dataset(DataConfig(root=str(root), val_fraction=0.125, test_fraction=0.25, split_seed=1))
    assert any(other[k].image_paths != splits[k].image_paths for k in splits)


def test_manifest_jsonl_groups_captions_and_keeps_given_splits(tmp_path):
    for name in ("a", "b", "c"):
        Image.new("RGB", (10, 10)).save(tmp_path / f"{name}.png")
    rows = [
        {"image": "a.png", "captions": ["a one", "a two"], "split": "train"},
        {"image": "b.png", "caption": "b one", "split": "val"},
        {"image": "c.png", "captions": ["c one", "c two", "c three"], "split": "test"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    splits = load_dataset(DataConfig(kind="manifest", manifest=str(manifest)))
    assert splits["train"].captions == ["a one", "a two"] and splits["train"].caption_image == [0, 0]
    assert splits["test"].num_images == 1 and len(splits["test"]) == 3


def test_manifest_csv(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "x.png")
    (tmp_path / "m.csv").write_text("image,caption\nx.png,first\nx.png,second\n")
    cfg = DataConfig(kind="manifest", manifest=str(tmp_path / "m.csv"), val_fraction=0.0, test_fraction=0.0)
    data = load_split(cfg, "train")
    assert data.captions == ["first", "second"] and data.caption_image == [0, 0]


@pytest.mark.parametrize(
    "content, fragment",
    [
        ('{"image": "missing.png", "caption": "x"}', "not found"),
        ('{"image": "ok.png", "caption": "   "}', "empty caption"),
        ('{"image": "ok.png", "captions": []}', "has no caption"),
        ("not json", "not valid JSON"),
    ],
)
def test_manifest_errors_name_the_problem(tmp_path, content, fragment):
    Image.new("RGB", (10, 10)).save(tmp_path / "ok.png")
    (tmp_path / "m.jsonl").write_text(content + "\n")
    with pytest.raises(DsmdError, match=fragment):
        load_dataset(DataConfig(kind="manifest", manifest=str(tmp_path / "m.jsonl")))


def test_missing_dataset_and_bad_split(tmp_path):
    with pytest.raises(DsmdError, match="apt-get install -y tuxpaint-stamps-default"):
        load_dataset(DataConfig(root=str(tmp_path / "none")))
    with pytest.raises(DsmdError, match="data.manifest"):
        load_dataset(DataConfig(kind="manifest"))
    with pytest.raises(DsmdError, match="'data.kind': 'coco' is not allowed; choose one of tuxpaint, folder, manifest"):
        DataConfig(kind="coco")
    manifest = write_synthetic_dataset(tmp_path / "syn", num_images=10)
    with pytest.raises(DsmdError, match="unknown split 'dev'"):
        load_split(DataConfig(kind="manifest", manifest=str(manifest)), "dev")


def test_corrupt_image_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DsmdError, match="cannot read image"):
        load_image(bad)


def test_transparency_is_composited_on_white(tmp_path):
    path = tmp_path / "t.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(path)
    assert load_image(path).getpixel((0, 0)) == (255, 255, 255)


def test_transform_shapes_and_normalisation():
    img = Image.new("RGB", (50, 30), (255, 255, 255))
    x = ImageTransform(size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(img)
    assert x.shape == (3, 16, 16) and torch.allclose(x, torch.ones_like(x))
    y = ImageTransform(size=16, train=True)(img)
    assert y.shape == (3, 16, 16)


def test_pair_dataset_batches_carry_their_targets_and_tokens(tmp_path):
    manifest = write_synthetic_dataset(tmp_path / "syn", num_images=6, captions_per_image=3, size=24)
    data = load_split(DataConfig(kind="manifest", manifest=str(manifest), val_fraction=0, test_fraction=0), "train")
    ds = PairDataset(data, ImageTransform(size=16), IndexTargets(), ImageCache())
    batch = PairCollator(count_words)([ds[j] for j in range(len(ds))])
    assert batch.pixel_values.shape == (18, 3, 16, 16)
    assert batch.image_index.tolist() == [j // 3 for j in range(18)]
    assert batch.caption_index.tolist() == list(range(18))
    # each pair's teacher rows are those of its own image (and view) and caption
    assert batch.teacher_image[:, 0].tolist() == [j // 3 for j in range(18)] and not batch.teacher_image[:, 1].any()
    assert batch.teacher_text[:, 0].tolist() == list(range(18))
    assert batch.input_ids[:, 0].tolist() == [len(c.split()) for c in data.captions] and batch.real.all()


def test_random_split_is_by_image_with_several_captions(tmp_path):
    manifest = write_synthetic_dataset(tmp_path / "syn", num_images=24, captions_per_image=3, size=16)
    splits = load_dataset(DataConfig(kind="manifest", manifest=str(manifest), val_fraction=0.25, test_fraction=0.25))
    assert [(splits[k].num_images, len(splits[k])) for k in ("train", "val", "test")] == [(12, 36), (6, 18), (6, 18)]
