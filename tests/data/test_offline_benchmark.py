"""dsmd build-benchmark: the caption filters, the split, and one real build from the Debian packages."""

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
    assert "| all | " in (tmp_path / "bench" / "README.md").read_text()
    cfg = DataConfig(kind="manifest", manifest=str(manifest))
    test = load_split(cfg, "test")
    assert test.num_images == 1000 and len(test.captions) == 1000
    for path in random.Random(0).sample(test.image_paths, 20):
        with Image.open(path) as img:
            assert max(img.size) >= ob.MIN_SIDE
