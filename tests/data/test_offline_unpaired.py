"""dsmd build-benchmark --unpaired: the perceptual hash, the rules that keep benchmark images and
Tux Paint stamps (in any format) out of the pools, and one real build checked item by item."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dsmd.config import load_config
from dsmd.data import offline_benchmark as ob
from dsmd.data import offline_unpaired as ou
from dsmd.data.datasets import load_dataset
from dsmd.data.images import load_image
from dsmd.data.unpaired import load_pools

PACKAGES_PRESENT = ob.STAMPS.is_dir() and ob.EMOJI_FONT.is_file() and (ob.OPENCLIPART / "png").is_dir()
RSVG = shutil.which("rsvg-convert") is not None


def drawing(kind: str, size: int = 96, offset: int = 0, canvas: int | None = None) -> Image.Image:
    """A dark shape on white (``kind``: kite, bars or ring), at ``size`` px, on a canvas that may be larger."""
    img = Image.new("RGB", (canvas or size, canvas or size), "white")
    d = ImageDraw.Draw(img)
    s, o = size, offset
    if kind == "kite":
        d.polygon(
            [(o + s // 2, o), (o + s - 1, o + s // 3), (o + s // 2, o + s - 1), (o, o + s // 3)], fill=(30, 60, 200)
        )
    elif kind == "bars":
        for k in range(4):
            d.rectangle((o + k * s // 4, o, o + k * s // 4 + s // 10, o + s - 1), fill=(200, 30, 30))
    else:
        d.ellipse((o, o, o + s - 1, o + s - 1), outline=(0, 0, 0), width=max(2, s // 8))
    return img


def distance(a: Image.Image, b: Image.Image) -> int:
    return int((ou.dhash(a) != ou.dhash(b)).sum())


def test_the_hash_finds_a_drawing_again_at_another_size_and_place_and_tells_others_apart():
    kite = drawing("kite")
    assert distance(kite, drawing("kite", size=64, offset=30, canvas=160)) <= 8
    assert distance(kite, drawing("bars")) > ou.NEAR and distance(kite, drawing("ring")) > ou.NEAR
    assert ou.dhash(Image.new("RGB", (40, 40), "white")) is None
    transparent = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
    transparent.alpha_composite(drawing("kite").convert("RGBA"))
    assert distance(kite, transparent) == 0


def test_nearest_distance_is_the_fewest_differing_bits():
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 256)) > 0.5, rng.random((7, 256)) > 0.5
    want = [min(sum(x != y for x, y in zip(row, other, strict=True)) for other in b) for row in a]
    assert ou.nearest_distance(a, b).tolist() == want
    assert ou.nearest_distance(a, np.zeros((0, 256), dtype=bool)).tolist() == [257] * 5


def test_names_titles_and_captions():
    assert ou.name_words("woman_doctor_gerald_g._01") == {"woman", "doctor", "gerald"}
    stamps = ou.Stamps(np.zeros((0, 256), bool), set(), set(), {frozenset({"woman", "doctor"})}, {"lock open"})
    assert ou._named_like_a_stamp({"image": "/x/woman_doctor_gerald_g._01.png", "title": "a"}, stamps)
    assert ou._named_like_a_stamp({"image": "/x/padlock.png", "title": "lock open"}, stamps)
    assert not ou._named_like_a_stamp({"image": "/x/woman_nurse.png", "title": "woman nurse"}, stamps)
    assert ou._loose_title("Part of the Flat Icon Collection") is None
    assert ou._loose_title("apple (red)") == "apple" and ou._loose_title("file_0231") == "file 0231"
    assert ou._emoji_caption("\U0001f1ef\U0001f1f5", ":Japan:") == "flag of Japan"
    assert ou._emoji_caption("\U0001f44d\U0001f3fd", ":thumbs_up_medium_skin_tone:") == "thumbs up medium skin tone"


def test_skin_tone_variants_of_val_and_test_emoji_are_held_back():
    benchmark = [
        {"image": "emoji/1f44d.png", "caption": "thumbs up", "source": "emoji", "split": "test"},
        {"image": "emoji/1f44b.png", "caption": "waving hand", "source": "emoji", "split": "train"},
    ]
    found = {e["char"]: e for e in ou.emoji_candidates(benchmark)}
    assert "\U0001f44d" not in found and "\U0001f44b" not in found  # the benchmark's own
    assert found["\U0001f44d\U0001f3fd"]["held"] and not found["\U0001f44b\U0001f3fd"]["held"]
    assert not found["\U0001f1ef\U0001f1f5"]["held"] and found["\U0001f1ef\U0001f1f5"]["caption"] == "flag of Japan"


def test_pool_images_are_no_benchmark_image_and_no_stamp_in_any_form(tmp_path, monkeypatch):
    monkeypatch.setattr(ob, "STAMPS", tmp_path / "stamps")
    (tmp_path / "stamps").mkdir()
    drawing("kite").save(tmp_path / "stamps" / "kite.png")
    drawing("ring").save(tmp_path / "bench_test.png")
    drawing("bars").save(tmp_path / "bench_train.png")
    benchmark = [
        {"image": str(tmp_path / "bench_test.png"), "caption": "a ring", "source": "clipart", "split": "test"},
        {"image": str(tmp_path / "bench_train.png"), "caption": "bars", "source": "clipart", "split": "train"},
    ]
    stamp = tmp_path / "stamps" / "kite.png"
    stamps = ou.Stamps(
        ou.dhash(Image.open(stamp))[None], {hashlib.sha256(stamp.read_bytes()).hexdigest()}, set(), set(), set()
    )
    files = {
        "stamp_copy.png": stamp.read_bytes(),  # a stamp's bytes
        "stamp_redrawn.png": None,  # the stamp drawn again, smaller, elsewhere
        "test_redrawn.png": None,  # a test image drawn again
        "train_copy.png": (tmp_path / "bench_train.png").read_bytes(),  # a benchmark image's bytes
        "train_redrawn.png": None,  # near a train image: allowed
        "other.png": None,
    }
    redraw = {"stamp_redrawn.png": "kite", "test_redrawn.png": "ring", "train_redrawn.png": "bars"}
    for name, data in files.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        elif name == "other.png":
            img = Image.new("RGB", (96, 96), "white")
            ImageDraw.Draw(img).line((0, 95, 95, 0), fill="black", width=9)
            img.save(tmp_path / name)
        else:
            drawing(redraw[name], size=70, offset=13, canvas=110).save(tmp_path / name)
    candidates = [{"image": n, "source": "clipart", "path": tmp_path / n} for n in files]
    candidates.append({"image": "in_stamps", "source": "clipart", "path": stamp})  # a stamp file itself
    kept = ou._pool_images(tmp_path, benchmark, candidates, stamps)
    assert [c["image"] for c in kept] == ["train_redrawn.png", "other.png"]


@pytest.mark.skipif(not RSVG, reason="needs rsvg-convert (Debian librsvg2-bin)")
def test_svg_stamps_are_rendered_and_their_names_and_texts_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(ob, "STAMPS", tmp_path)
    (tmp_path / "woman_doctor.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/" width="96" height="96">'
        "<metadata><dc:title>Woman Doctor</dc:title></metadata>"
        '<polygon points="48,0 95,32 48,95 0,32" fill="#1e3cc8"/></svg>'
    )
    (tmp_path / "woman_doctor.txt").write_text("A doctor.\nfr.utf8=Une docteure.\n")
    stamps = ou.stamp_fingerprints()
    assert stamps.names == {frozenset({"woman", "doctor"})} and stamps.titles == {"woman doctor"}
    assert stamps.lines == {"a doctor", "une docteure"}
    assert ou.nearest_distance(ou.dhash(drawing("kite"))[None], stamps.hashes)[0] <= ou.NEAR


def test_pool_captions_leave_out_benchmark_and_stamp_text():
    stamps = ou.Stamps(np.zeros((0, 256), bool), set(), {"a red kangaroo"}, set(), {"woman doctor"})
    benchmark = [{"caption": "Kiwi fruit", "image": "x", "source": "stamps", "split": "test"}]
    emoji = [{"caption": "kiwi fruit", "held": False}, {"caption": "flag of Japan", "held": False}]
    emoji += [{"caption": "thumbs up dark skin tone", "held": True}]
    clipart = [
        {"caption": "A red kangaroo!"},
        {"caption": "woman doctor"},
        {"caption": None},
        {"caption": "Flag of japan"},
    ]
    got = ou._pool_captions(benchmark, emoji, clipart, stamps)
    assert got == [{"caption": "flag of Japan", "source": "emoji"}]


@pytest.mark.e2e
@pytest.mark.skipif(not (PACKAGES_PRESENT and RSVG), reason="needs the Debian packages and rsvg-convert")
def test_a_real_build_keeps_benchmark_images_and_stamps_out_of_the_pools(tmp_path):
    manifest = ob.build_offline_benchmark(tmp_path / "bench", log=lambda *_: None, unpaired=True)
    folder = tmp_path / "bench" / "unpaired"
    images = [json.loads(line) for line in (folder / "images.jsonl").read_text().splitlines()]
    captions = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
    assert {i["source"] for i in images} == {"clipart", "emoji"} and len(images) > 1000
    assert {c["source"] for c in captions} == {"clipart", "emoji"} and len(captions) > 1000
    bench = [json.loads(line) for line in manifest.read_text().splitlines()]
    bench_paths = [Path(b["image"]) if Path(b["image"]).is_absolute() else manifest.parent / b["image"] for b in bench]
    pool_paths = [folder / i["image"] for i in images]
    stamp_files = [p for p in ob.STAMPS.rglob("*") if p.is_file()]
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    taken = {digest(p) for p in [*bench_paths, *stamp_files]}
    resolved = {p.resolve() for p in [*bench_paths, *stamp_files]}
    for path in pool_paths:
        assert path.resolve() not in resolved and ob.STAMPS not in path.resolve().parents, path
        assert digest(path) not in taken, path
    stamps = ou.stamp_fingerprints()
    hashes = np.array([ou._file_hash(p) for p in pool_paths])
    assert ou.nearest_distance(hashes, stamps.hashes).min() > ou.NEAR  # no stamp, in any format
    held = [ou._file_hash(p) for p, b in zip(bench_paths, bench, strict=True) if b["split"] != "train"]
    held = np.array([h for h in held if h is not None])
    assert ou.nearest_distance(hashes, held).min() > ou.NEAR  # nothing near what the benchmark tests on
    keys = {ou.caption_key(b["captions"][0]) for b in bench} | stamps.lines | stamps.titles
    assert not [c for c in captions if ou.caption_key(c["caption"]) in keys]
    # the pools load as configured (and pass the check against val and test items)
    cfg = load_config(
        None,
        [
            "data.kind=manifest",
            f"data.manifest={manifest}",
            "data.unpaired_images.kind=jsonl",
            f"data.unpaired_images.path={folder / 'images.jsonl'}",
            "data.unpaired_texts.kind=jsonl",
            f"data.unpaired_texts.path={folder / 'captions.jsonl'}",
        ],
    )
    pools = load_pools(cfg.data, load_dataset(cfg.data))
    assert pools["image"].num_images == len(images) and len(pools["text"]) == len(captions)
    assert load_image(pools["image"].image_paths[-1]).size == (ob.EMOJI_SIDE, ob.EMOJI_SIDE)
