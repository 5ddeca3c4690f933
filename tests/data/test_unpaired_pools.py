"""Pools of unpaired images and captions: every source kind, repeats and limits, the errors
(each naming the key or FILE:LINE), and the refusal of pools that hold val or test items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from dsmd.config import load_config
from dsmd.data.datasets import load_dataset
from dsmd.data.images import load_image
from dsmd.data.synthetic import write_synthetic_dataset
from dsmd.data.unpaired import NO_IMAGE, load_pools
from dsmd.errors import DsmdError


def _images(folder: Path, names: list[str]) -> list[Path]:
    paths = []
    for k, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (k * 30, 0, 0)).save(path)
        paths.append(path)
    return paths


def _pools(*overrides: str) -> dict:
    return load_pools(load_config(None, list(overrides)).data)


def test_a_folder_pool_lists_its_images_in_order_skipping_excluded_folders(tmp_path):
    _images(tmp_path, ["b.png", "a.jpg", "sub/c.png", "skip/d.png"])
    (tmp_path / "notes.txt").write_text("not an image")
    pools = _pools(
        "data.unpaired_images.kind=folder",
        f"data.unpaired_images.path={tmp_path}",
        "data.unpaired_images.exclude=[skip]",
    )
    pool = pools["image"]
    assert [Path(p).relative_to(tmp_path).as_posix() for p in pool.image_paths] == ["a.jpg", "b.png", "sub/c.png"]
    assert pool.captions == [] and pool.caption_image == [] and set(pools) == {"image"}


def test_a_jsonl_pool_resolves_paths_drops_repeats_and_keeps_the_limit(tmp_path):
    _images(tmp_path / "imgs", ["x.png", "y.png", "z.png"])
    lines = [
        {"img": "imgs/x.png"},
        {"img": str(tmp_path / "imgs/y.png"), "other": 1},
        {"img": "imgs/x.png"},
        {"img": "imgs/z.png"},
    ]
    (tmp_path / "pool.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    pool = _pools(
        "data.unpaired_images.kind=jsonl",
        f"data.unpaired_images.path={tmp_path / 'pool.jsonl'}",
        "data.unpaired_images.column=img",
        "data.unpaired_images.limit=2",
    )["image"]
    assert pool.image_paths == [str(tmp_path / "imgs/x.png"), str(tmp_path / "imgs/y.png")]


def test_caption_pools_from_lines_and_jsonl(tmp_path):
    (tmp_path / "t.txt").write_text("  a red kangaroo \n\nblue sky\na red kangaroo\n", encoding="utf-8")
    pool = _pools("data.unpaired_texts.kind=lines", f"data.unpaired_texts.path={tmp_path / 't.txt'}")["text"]
    assert pool.captions == ["a red kangaroo", "blue sky"]
    assert pool.caption_image == [NO_IMAGE, NO_IMAGE] and pool.image_paths == []
    (tmp_path / "t.jsonl").write_text('{"text": "one"}\n{"text": ["two", "three"]}\n')
    pool = _pools(
        "data.unpaired_texts.kind=jsonl",
        f"data.unpaired_texts.path={tmp_path / 't.jsonl'}",
        "data.unpaired_texts.column=text",
    )
    assert pool["text"].captions == ["one", "two", "three"]


def test_webdataset_pools_take_images_without_captions_and_captions_without_images(tmp_path):
    import webdataset as wds

    png = _images(tmp_path, ["p.png"])[0].read_bytes()
    with wds.TarWriter(str(tmp_path / "pool-000000.tar")) as sink:
        sink.write({"__key__": "000", "png": png})  # an image alone
        sink.write({"__key__": "001", "txt": "a caption alone\nand another"})
        sink.write({"__key__": "002", "png": png, "json": json.dumps({"caption": "with its image"})})
    shards = str(tmp_path / "pool-{000000..000000}.tar")
    pools = _pools(
        "data.unpaired_images.kind=webdataset",
        f"data.unpaired_images.path={shards}",
        "data.unpaired_texts.kind=webdataset",
        f"data.unpaired_texts.path={tmp_path}",
    )
    assert [p.rsplit("::", 1)[1] for p in pools["image"].image_paths] == ["000.png", "002.png"]
    assert load_image(pools["image"].image_paths[0]).size == (8, 8)
    assert pools["text"].captions == ["a caption alone", "and another", "with its image"]


@pytest.mark.parametrize(
    "setup, overrides, fragment",
    [
        (None, ["data.unpaired_images.kind=folder", "data.unpaired_images.path={d}/missing"], "is not a folder"),
        (None, ["data.unpaired_images.kind=folder", "data.unpaired_images.path={d}"], "no images in"),
        (
            "bad.jsonl",
            ["data.unpaired_images.kind=jsonl", "data.unpaired_images.path={d}/bad.jsonl"],
            "bad.jsonl:2: not valid JSON",
        ),
        (
            "bad.jsonl",
            ["data.unpaired_texts.kind=jsonl", "data.unpaired_texts.path={d}/bad.jsonl"],
            "bad.jsonl:1: no 'caption'",
        ),
        (
            "gone.jsonl",
            ["data.unpaired_images.kind=jsonl", "data.unpaired_images.path={d}/gone.jsonl"],
            "image not found",
        ),
        (
            "num.jsonl",
            ["data.unpaired_images.kind=jsonl", "data.unpaired_images.path={d}/num.jsonl"],
            "must be a string (an image's path), not a number (3)",
        ),
        (
            "num.jsonl",
            [
                "data.unpaired_texts.kind=jsonl",
                "data.unpaired_texts.path={d}/num.jsonl",
                "data.unpaired_texts.column=image",
            ],
            "num.jsonl:1: 'image' must be a string or a list",
        ),
        (
            "latin1.txt",
            ["data.unpaired_texts.kind=lines", "data.unpaired_texts.path={d}/latin1.txt"],
            "latin1.txt:1: not UTF-8 text",
        ),
        ("blank.txt", ["data.unpaired_texts.kind=lines", "data.unpaired_texts.path={d}/blank.txt"], "no captions in"),
        (
            "surrogate.jsonl",
            ["data.unpaired_texts.kind=jsonl", "data.unpaired_texts.path={d}/surrogate.jsonl"],
            "surrogate.jsonl, caption 2): the caption 'a .udcff kite' holds .udcff, a lone surrogate",
        ),
        (None, ["data.unpaired_texts.kind=lines", "data.unpaired_texts.path={d}/none.txt"], "not found"),
    ],
)
def test_bad_pools_are_refused_by_name(tmp_path, setup, overrides, fragment):
    files = {
        "bad.jsonl": '{"image": "a.png"}\n{not json\n',
        "gone.jsonl": '{"image": "missing.png"}\n',
        "num.jsonl": '{"image": 3}\n',
        "blank.txt": "\n  \n",
        "surrogate.jsonl": '{"caption": "a red kite"}\n{"caption": "a \\udcff kite"}\n',
    }
    if setup == "latin1.txt":
        (tmp_path / setup).write_bytes("caf\xe9\n".encode("latin-1"))
    elif setup is not None:
        (tmp_path / setup).write_text(files[setup])
    with pytest.raises(DsmdError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        _pools(*[o.format(d=tmp_path) for o in overrides])


def test_pools_may_not_hold_val_or_test_items(tmp_path):
    manifest = write_synthetic_dataset(tmp_path / "data", num_images=12, captions_per_image=1, size=16)
    base = ["data.kind=manifest", f"data.manifest={manifest}", "data.val_fraction=0.25", "data.test_fraction=0.25"]
    cfg = load_config(None, base)
    splits = load_dataset(cfg.data)
    train_image, test_image = splits["train"].image_paths[0], splits["test"].image_paths[0]
    (tmp_path / "pool.jsonl").write_text(json.dumps({"image": train_image}) + "\n")
    pools = ["data.unpaired_images.kind=jsonl", f"data.unpaired_images.path={tmp_path / 'pool.jsonl'}"]
    assert load_pools(load_config(None, [*base, *pools]).data, splits)["image"].image_paths == [train_image]
    (tmp_path / "pool.jsonl").write_text(
        json.dumps({"image": train_image}) + "\n" + json.dumps({"image": test_image}) + "\n"
    )
    with pytest.raises(DsmdError, match="1 images of the pool are val or test images"):
        load_pools(load_config(None, [*base, *pools]).data, splits)
    (tmp_path / "t.txt").write_text(
        splits["train"].captions[0] + "\n" + "  " + splits["val"].captions[0].upper() + "\n"
    )
    texts = ["data.unpaired_texts.kind=lines", f"data.unpaired_texts.path={tmp_path / 't.txt'}"]
    with pytest.raises(DsmdError, match="1 captions of the pool are val or test captions"):
        load_pools(load_config(None, [*base, *texts]).data, splits)


def test_a_vocabulary_pool_fills_the_template_with_each_whole_word_of_the_tokenizer(tiny_models):
    pool = _pools("data.unpaired_texts.kind=vocabulary", "data.unpaired_texts.path=minilm")["text"]
    assert pool.captions[:2] == ["a photo of a the.", "a photo of a and."]  # the vocabulary's order
    assert len(pool.captions) == 21358 and "a photo of a kangaroo." in pool.captions
    assert not any("##" in c or "[" in c for c in pool.captions)
    words = _pools(
        "data.unpaired_texts.kind=vocabulary",
        f"data.unpaired_texts.path={tiny_models['bert']}",
        "data.unpaired_texts.template=an icon of {}",
    )["text"].captions
    assert words and all(c.startswith("an icon of ") for c in words)
    with pytest.raises(DsmdError, match=r"data\.unpaired_texts\.template.*has no \{\} for the word"):
        load_config(
            None,
            [
                "data.unpaired_texts.kind=vocabulary",
                "data.unpaired_texts.path=minilm",
                "data.unpaired_texts.template=x",
            ],
        )
