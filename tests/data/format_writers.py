"""Writers of small datasets in the real formats, by the real tools where there are some.

Every image is a distinct, seeded noise pattern, so that decoding the wrong member or row
shows. Captions name their image (``"image 7 caption 2"``) so tests can check grouping.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def make_image(i: int, size: tuple[int, int] = (12, 10)) -> Image.Image:
    """A deterministic RGB noise image, different for every ``i``."""
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def image_bytes(i: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    make_image(i).save(buf, format=fmt)
    return buf.getvalue()


def captions_of(i: int, n: int = 5) -> list[str]:
    return [f"image {i} caption {k}" for k in range(n)]


def image_of(caption: str) -> int:
    """The image number a fixture caption names."""
    return int(caption.split()[1])


def write_karpathy(folder: Path, layout: str) -> dict:
    """A Karpathy split file and its images.

    ``flickr``: 5 train, 2 val, 3 test images in ``flickr30k-images/``, no (or empty)
    ``filepath``. ``coco``: train (train2014), restval, val and test (val2014); test image 33
    has 7 sentences.
    """
    images = []
    if layout == "flickr":
        plan = (
            [(i, "", "train") for i in range(5)]
            + [(i, "", "val") for i in (5, 6)]
            + [(i, "", "test") for i in (7, 8, 9)]
        )
        root = folder / "flickr30k-images"
    else:
        plan = [
            (20, "train2014", "train"),
            (21, "train2014", "train"),
            (22, "val2014", "restval"),
            (23, "val2014", "restval"),
            (30, "val2014", "val"),
            (31, "val2014", "test"),
            (32, "val2014", "test"),
            (33, "val2014", "test"),
        ]
        root = folder / "coco"
    sentid = 0
    for i, filepath, split in plan:
        prefix = "COCO_train2014_" if filepath == "train2014" else "COCO_val2014_" if filepath else ""
        filename = f"{prefix}{i:012d}.jpg" if layout == "coco" else f"{1000 + i}.jpg"
        (root / filepath).mkdir(parents=True, exist_ok=True)
        make_image(i).save(root / filepath / filename, quality=95)
        sentences = []
        for caption in captions_of(i, 7 if i == 33 else 5):
            sentences.append({"tokens": caption.split(), "raw": caption + " ", "imgid": i, "sentid": sentid})
            sentid += 1
        entry = {
            "sentids": [s["sentid"] for s in sentences],
            "filename": filename,
            "imgid": i,
            "split": split,
            "sentences": sentences,
        }
        if layout == "coco":
            entry.update(filepath=filepath, cocoid=i)
        elif i % 2:
            entry["filepath"] = ""  # some Flickr30k copies carry an empty filepath
        images.append(entry)
    path = folder / f"dataset_{'flickr30k' if layout == 'flickr' else 'coco'}.json"
    path.write_text(json.dumps({"images": images, "dataset": layout}))
    return {"json": path, "root": root}


def write_image_files(folder: Path, numbers, fmt: str = "PNG") -> dict[int, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i in numbers:
        paths[i] = folder / f"{i:04d}.{fmt.lower()}"
        make_image(i).save(paths[i], format=fmt)
    return paths


def shard_sample(key: str, i: int, ext: str = "jpg", captions=None, meta: dict | None = None) -> dict:
    sample = {"__key__": key, ext: image_bytes(i, "JPEG" if ext == "jpg" else ext.upper())}
    if captions is not None:
        sample["txt"] = "\n".join(captions) + "\n"
    if meta is not None:
        sample["json"] = json.dumps(meta)
    return sample


def write_shards(folder: Path) -> dict:
    """``webdataset.TarWriter`` shards named by split: train-00000{0,1,2}.tar (3 samples each,
    2-3 caption lines), val-000000.tar and test-000000.tar (2 samples each). train-000001.tar
    also holds a sample without image, which is skipped; image 4 is a PNG."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    plan = {
        "train-000000": [0, 1, 2],
        "train-000001": [3, 4, 5],
        "train-000002": [6, 7, 8],
        "val-000000": [9, 10],
        "test-000000": [11, 12],
    }
    for name, ids in plan.items():
        with wds.TarWriter(str(folder / f"{name}.tar")) as sink:
            for i in ids:
                sink.write(shard_sample(f"{i:06d}", i, "png" if i == 4 else "jpg", captions_of(i, 2 + i % 2)))
            if name == "train-000001":
                sink.write({"__key__": "broken", "json": json.dumps({"caption": "no image here"})})
    return {"folder": folder, "plan": plan}


def write_plain_tar(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    """A shard written with ``tarfile`` alone (members in the order given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path
