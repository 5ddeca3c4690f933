"""Image-caption datasets: listing, validation and deterministic splits.

A dataset is a list of unique images and a list of captions, each caption pointing at the
row of its image (``caption_image``). Flickr30k and COCO have five captions per image, the
Tux Paint stamps one; everything downstream (feature store, losses, metrics) handles any
number.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from dsmd.config import DataConfig
from dsmd.errors import DsmdError

SPLITS = ("train", "val", "test")


@dataclass
class CaptionedImages:
    """One split of an image-caption dataset.

    Attributes:
        image_paths: ``N_i`` image files, each listed once.
        captions: ``N_t`` captions.
        caption_image: ``N_t`` ints, the row in ``image_paths`` of each caption's image.
        name: a label for messages and manifests (e.g. ``tuxpaint/test``).
    """

    image_paths: list[str]
    captions: list[str]
    caption_image: list[int]
    name: str = ""

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def num_images(self) -> int:
        return len(self.image_paths)

    def fingerprint(self) -> str:
        """sha256 over every image's path and size and every caption with its image.

        File contents are not hashed (that would read all of COCO); a renamed, resized or
        re-captioned dataset still changes the fingerprint.
        """
        h = hashlib.sha256()
        for path in self.image_paths:
            p = Path(path)
            h.update(f"{p.name}\0{p.stat().st_size if p.exists() else -1}\n".encode())
        for caption, image in zip(self.captions, self.caption_image, strict=True):
            h.update(f"{image}\0{caption}\n".encode())
        return h.hexdigest()


def _group(pairs: list[tuple[str, str]], name: str) -> CaptionedImages:
    """Group (image path, caption) pairs by image, keeping first-seen order."""
    index: dict[str, int] = {}
    captions, caption_image = [], []
    for path, caption in pairs:
        if path not in index:
            index[path] = len(index)
        captions.append(caption)
        caption_image.append(index[path])
    return CaptionedImages(list(index), captions, caption_image, name)


def _check_pairs(pairs: list[tuple[str, str, str]], source: str) -> None:
    if not pairs:
        raise DsmdError(f"no image-caption pairs found in {source}. Check the path and format.")
    missing = [p for p, _, _ in pairs if not Path(p).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DsmdError(
            f"image listed in {source} not found: {missing[0]}{more}. "
            "Fix the path, set data.root to the image folder, or remove the entry."
        )


def list_tuxpaint(root: str | Path, exclude: list[str]) -> list[tuple[str, str, str]]:
    """(image, caption, split='') for each ``NAME.png`` with a first-line caption in ``NAME.txt``.

    Images under a folder named in ``exclude`` (at any depth: ``food/fruit/cartoon``) and
    stamps without a caption file (the ``*_mirror.png`` variants) are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise DsmdError(
            f"Tux Paint stamps not found at {root}. Install them with "
            "`apt-get install -y tuxpaint-stamps-default` (scripts/setup.sh does), "
            "or set data.root to the stamps folder."
        )
    pairs = []
    for png in sorted(root.rglob("*.png")):
        if any(part in exclude for part in png.relative_to(root).parts[:-1]):
            continue
        txt = png.with_suffix(".txt")
        if not txt.is_file():
            continue
        lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
        caption = lines[0].strip() if lines else ""
        if caption:
            pairs.append((str(png), caption, ""))
    return pairs


def _resolve(path: str, base: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else base / p)


def list_manifest(manifest: str | Path, root: str | None) -> list[tuple[str, str, str]]:
    """(image, caption, split) rows from a JSONL or CSV manifest.

    JSONL: one object a line, ``{"image": PATH, "captions": [..]}`` (or ``"caption": str``),
    optional ``"split"``. CSV: a header with ``image`` and ``caption`` columns (one row per
    caption), optional ``split``.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DsmdError(f"dataset manifest not found: {manifest}. Set data.manifest to a JSONL or CSV file.")
    base = Path(root) if root else manifest.parent
    rows: list[tuple[str, str, str]] = []

    def add(image, captions, split, where):
        if not image:
            raise DsmdError(f"{where}: no image path. Every row needs an 'image' field.")
        if isinstance(captions, str):
            captions = [captions]
        if not captions:
            raise DsmdError(f"{where}: image {image} has no caption. Add one or remove the row.")
        for caption in captions:
            if not isinstance(caption, str) or not caption.strip():
                raise DsmdError(f"{where}: empty caption for image {image}. Write a caption or remove it.")
            rows.append((_resolve(image, base), caption.strip(), split or ""))

    if manifest.suffix.lower() == ".csv":
        with manifest.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                raise DsmdError(f"{manifest}: a CSV manifest needs a header with 'image' and 'caption' columns.")
            for i, row in enumerate(reader, start=2):
                add(row["image"], row["caption"] or "", row.get("split"), f"{manifest}:{i}")
    else:
        for i, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DsmdError(f"{manifest}:{i}: not valid JSON ({exc}). Use one JSON object a line.") from exc
            if not isinstance(obj, dict):
                raise DsmdError(f"{manifest}:{i}: expected a JSON object with 'image' and 'captions'.")
            add(obj.get("image"), obj.get("captions", obj.get("caption", [])), obj.get("split"), f"{manifest}:{i}")
    return rows


def _assign_splits(images: list[str], cfg: DataConfig) -> dict[str, str]:
    """Seeded split of the sorted unique images into test, val, train (in that order)."""
    order = sorted(set(images))
    random.Random(cfg.split_seed).shuffle(order)
    n = len(order)
    n_test = round(n * cfg.test_fraction)
    n_val = round(n * cfg.val_fraction)
    if n - n_test - n_val < 1:
        raise DsmdError(f"{n} images are too few for val_fraction={cfg.val_fraction}, test_fraction={cfg.test_fraction}.")
    split = {}
    for k, image in enumerate(order):
        split[image] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return split


def load_dataset(cfg: DataConfig) -> dict[str, CaptionedImages]:
    """List, validate and split the dataset the config describes.

    Returns:
        ``{"train": ..., "val": ..., "test": ...}``; every image is in exactly one split.

    Raises:
        DsmdError: missing folder or manifest, missing image, empty caption, unknown kind.
    """
    if cfg.kind == "tuxpaint":
        rows, source = list_tuxpaint(cfg.root, cfg.exclude), cfg.root
    elif cfg.kind == "manifest":
        if not cfg.manifest:
            raise DsmdError("data.kind=manifest needs data.manifest=PATH (a JSONL or CSV file).")
        rows, source = list_manifest(cfg.manifest, cfg.root if cfg.root != DataConfig.root else None), cfg.manifest
    else:
        raise DsmdError(f"unknown data.kind '{cfg.kind}'. Use 'tuxpaint' or 'manifest'.")
    _check_pairs(rows, str(source))
    if not 0 <= cfg.val_fraction < 1 or not 0 <= cfg.test_fraction < 1:
        raise DsmdError("data.val_fraction and data.test_fraction must lie in [0, 1).")
    given = {image: split for image, _, split in rows if split}
    for image, split in given.items():
        if split not in SPLITS:
            raise DsmdError(f"image {image}: unknown split '{split}'. Use train, val or test.")
    split_of = given if len(given) == len({r[0] for r in rows}) else _assign_splits([r[0] for r in rows], cfg)
    out = {}
    for split in SPLITS:
        pairs = [(image, caption) for image, caption, _ in rows if split_of[image] == split]
        out[split] = _group(pairs, f"{cfg.kind}/{split}")
    return out


def load_split(cfg: DataConfig, split: str) -> CaptionedImages:
    """One split of :func:`load_dataset`; a split name that does not exist is refused."""
    if split not in SPLITS:
        raise DsmdError(f"unknown split '{split}'. Use one of: {', '.join(SPLITS)}.")
    data = load_dataset(cfg)[split]
    if data.num_images == 0:
        raise DsmdError(f"split '{split}' of {cfg.kind} is empty. Adjust data.val_fraction / data.test_fraction.")
    return data
