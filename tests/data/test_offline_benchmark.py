"""dsmd build-benchmark: the caption filters, the split, the out-of-domain manifests, and one real build
from the Debian packages."""

from __future__ import annotations

import collections
import json
import random
from pathlib import Path

import pytest
from PIL import Image

from dsmd.config import DataConfig
from dsmd.data import offline_benchmark as ob
from dsmd.data.datasets import load_split
from dsmd.errors import DsmdError

PACKAGES_PRESENT = ob.STAMPS.is_dir() and ob.EMOJI_FONT.is_file() and (ob.OPENCLIPART / "png").is_dir()


@pytest.mark.parametrize(
    "title, expected",
    [
        ("Pepperoni Pizza Slice (B and W)", "pepperoni pizza slice"),
        ("Red Apple", "red apple"),
        ("cartoon cat 2", "cartoon cat"),
        ("Part of the Flat Icon Collection (Wed Jun 1 2011)", None),  # a collection label
        ("Untitled", None),
        ("apple", None),  # one word
        ("one two three four five six seven eight nine", None),  # nine words
        ("Gatto sul tetto!", "gatto sul tetto"),  # letters only: language is not checked
        ("file_0231.svg", None),
        ("TUX PENGUIN", None),  # all capitals: a label
        ("café au lait", None),  # not plain ASCII letters
        ("clipart by someone", None),
        (None, None),
    ],
)
def test_clip_art_titles_are_filtered(title, expected):
    assert ob._clean_title(title) == expected


def test_each_caption_is_kept_once_over_all_sources():
    items = [
        {"caption": "A frog.", "source": "stamps", "image": "a"},
        {"caption": "a FROG", "source": "clipart", "image": "b"},
        {"caption": "frog", "source": "emoji", "image": "c"},
    ]
    assert [i["image"] for i in ob._unique_captions(items)] == ["a", "c"]


@pytest.mark.parametrize("count, sizes", [(1000, [403, 1612, 1254]), (7, [1, 1, 1]), (300, [10, 20, 970]), (0, [5, 5])])
def test_apportion_is_proportional_and_exact(count, sizes):
    parts = ob._apportion(count, sizes)
    assert sum(parts) == count
    total = sum(sizes)
    assert all(abs(p - count * n / total) < 1 for p, n in zip(parts, sizes, strict=True))


def test_split_is_deterministic_and_per_source():
    items = [{"source": s, "caption": f"{s} {k}"} for s, n in (("a", 50), ("b", 150)) for k in range(n)]
    copy = [dict(i) for i in items]
    ob._split(items, test_images=40, val_images=20, seed=3)
    ob._split(copy, test_images=40, val_images=20, seed=3)
    assert items == copy
    counts = collections.Counter((i["source"], i["split"]) for i in items)
    assert counts[("a", "test")] == 10 and counts[("b", "test")] == 30
    assert counts[("a", "val")] == 5 and counts[("b", "val")] == 15


def test_huge_and_tiny_drawings_are_left_out(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "tiny.png")
    Image.new("RGB", (200, 100)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert [ob._usable_size(tmp_path / n) for n in ("tiny.png", "ok.png", "broken.png")] == [False, True, False]


def _fake_records(folder: Path) -> list[dict]:
    """In-domain manifest lines over small images: 10 a source, split 6 / 2 / 2."""
    records = []
    for source in ob.SOURCES:
        for k in range(10):
            name = f"{source}_{k}.png"
            Image.new("RGB", (8, 8), (k * 20, 0, 0)).save(folder / name)
            split = "train" if k < 6 else "val" if k < 8 else "test"
            records.append({"image": name, "captions": [f"{source} number {k}"], "split": split, "source": source})
    return records


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_out_of_domain_manifests_hold_one_source_out_of_training(tmp_path):
    records = _fake_records(tmp_path)
    ob._write_manifest(tmp_path / "manifest.jsonl", records)
    in_domain = (tmp_path / "manifest.jsonl").read_text()
    counts = ob.write_ood_manifests(tmp_path, records)
    assert (tmp_path / "manifest.jsonl").read_text() == in_domain  # the in-domain manifest is unchanged
    assert _lines(tmp_path / "manifest.jsonl") == records
    for held_out in ob.SOURCES:
        lines = _lines(tmp_path / f"manifest_ood_{held_out}.jsonl")
        assert all(set(line) == {"image", "captions", "split", "source"} for line in lines)
        assert all(line["source"] != held_out for line in lines if line["split"] in ("train", "val"))
        assert all(line["source"] == held_out for line in lines if line["split"] == "test")
        assert counts[held_out] == {"train": 12, "val": 4, "test": 2}
        assert len({line["image"] for line in lines}) == len(lines)  # every image in at most one split
        assert all(line in records for line in lines)  # each keeps its in-domain split
        for split in ("train", "val", "test"):
            data = load_split(
                DataConfig(kind="manifest", manifest=str(tmp_path / f"manifest_ood_{held_out}.jsonl")), split
            )
            assert data.num_images == counts[held_out][split]
            assert all(Path(p).is_file() for p in data.image_paths)
        test = load_split(
            DataConfig(kind="manifest", manifest=str(tmp_path / f"manifest_ood_{held_out}.jsonl")), "test"
        )
        assert sorted(test.captions) == [f"{held_out} number {k}" for k in (8, 9)]


def test_a_setting_without_test_images_is_refused_before_writing(tmp_path):
    records = [r for r in _fake_records(tmp_path) if not (r["source"] == "emoji" and r["split"] == "test")]
    with pytest.raises(DsmdError, match="'emoji held out' would have no test images"):
        ob.write_ood_manifests(tmp_path, records)
    assert not list(tmp_path.glob("manifest_ood_*"))


@pytest.mark.e2e
@pytest.mark.skipif(not PACKAGES_PRESENT, reason="needs the Debian packages: scripts/setup.sh --dev installs them")
def test_a_real_build_gives_a_loadable_benchmark(tmp_path):
    manifest = ob.build_offline_benchmark(tmp_path / "bench", log=lambda *_: None)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    splits = collections.Counter(line["split"] for line in lines)
    assert splits["test"] == 1000 and splits["val"] == 300 and splits["train"] >= 1000
    keys = [" ".join(line["captions"][0].lower().split()) for line in lines]
    assert len(set(keys)) == len(keys)
    assert {line["source"] for line in lines} == {"stamps", "emoji", "clipart"}
    emoji = [line for line in lines if line["source"] == "emoji"]
    assert all(not Path(line["image"]).is_absolute() for line in emoji)  # the folder can move
    readme = (tmp_path / "bench" / "README.md").read_text()
    assert "| all | " in readme and "| `manifest_ood_stamps.jsonl` | stamps |" in readme
    for held_out in ob.SOURCES:
        ood = [
            json.loads(line)
            for line in (tmp_path / "bench" / f"manifest_ood_{held_out}.jsonl").read_text().splitlines()
        ]
        assert {line["source"] for line in ood if line["split"] == "test"} == {held_out}
        assert held_out not in {line["source"] for line in ood if line["split"] != "test"}
        assert len(ood) == sum(1 for line in lines if (line["source"] == held_out) == (line["split"] == "test"))
    cfg = DataConfig(kind="manifest", manifest=str(manifest))
    test = load_split(cfg, "test")
    assert test.num_images == 1000 and len(test.captions) == 1000
    for path in random.Random(0).sample(test.image_paths, 20):
        with Image.open(path) as img:
            assert max(img.size) >= ob.MIN_SIDE
