"""Image-caption datasets: listing, validation and deterministic splits.

A dataset is a list of unique images and a list of captions, each caption pointing at the
row of its image (``caption_image``). Flickr30k and COCO have five captions per image (a few
COCO images six or seven), the Tux Paint stamps one; everything downstream (feature store,
losses, metrics) handles any number. An image is a file path or a reference into a container
(``SHARD.tar::MEMBER``, ``FILE.parquet::row=R::col=C``; :mod:`dsmd.data.images`).

The formats (``data.kind``: tuxpaint, manifest, karpathy, hf, webdataset) are listed by
:mod:`dsmd.data.formats`; this module validates what they list, assigns the splits and groups
captions by image.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from dsmd.config import DataConfig
from dsmd.data.formats import list_rows
from dsmd.data.formats._common import SPLIT_ALIASES, Row, check_encodable
from dsmd.data.formats.manifest import list_manifest  # noqa: F401  (kept importable from here)
from dsmd.data.formats.tuxpaint import list_tuxpaint  # noqa: F401
from dsmd.data.images import identity, image_exists
from dsmd.errors import DsmdError

SPLITS = ("train", "val", "test")


@dataclass
class CaptionedImages:
    """One split of an image-caption dataset.

    Attributes:
        image_paths: ``N_i`` images, each listed once: file paths or container references
            (:mod:`dsmd.data.images`), opened with :func:`dsmd.data.images.load_image`.
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
        """sha256 over every image's identity and every caption with its image.

        A file's identity is its name and size; a reference's, its container's name and size
        and the member (``identity`` in :mod:`dsmd.data.images`). Image bytes are not read
        (that would read all of COCO); a renamed, resized or re-captioned dataset still
        changes the fingerprint.
        """
        h = hashlib.sha256()
        sizes: dict[str, int] = {}
        for path in self.image_paths:
            h.update(f"{identity(path, sizes)}\n".encode())
        for caption, image in zip(self.captions, self.caption_image, strict=True):
            h.update(f"{image}\0{caption}\n".encode())
        return h.hexdigest()


def _group(pairs: list[tuple[str, str]], name: str) -> CaptionedImages:
    """Group (image, caption) pairs by image, keeping first-seen order."""
    index: dict[str, int] = {}
    captions, caption_image = [], []
    for path, caption in pairs:
        if path not in index:
            index[path] = len(index)
        captions.append(caption)
        caption_image.append(index[path])
    return CaptionedImages(list(index), captions, caption_image, name)


def _check_rows(rows: list[Row], source: str) -> None:
    if not rows:
        raise DsmdError(f"no image-caption pairs found in {source}. Check the path and format.")
    for image, caption, _ in rows:  # every format's captions (the manifest's are checked by line first)
        check_encodable(caption, f"{source} (image {image!r})")
    containers: dict[str, bool] = {}
    images = list(dict.fromkeys(r[0] for r in rows))
    missing = [p for p in images if not image_exists(p, containers)]
    if missing:
        raise DsmdError(
            f"image listed in {source} not found: {missing[0]} ({len(missing)} of {len(images)} images "
            "missing). Fix the path, set data.root to the image folder, or remove the entry."
        )


def _given_splits(rows: list[Row], source: str) -> dict[str, str]:
    """``image -> split`` for the images the data assigns a split (names mapped by ``SPLIT_ALIASES``).

    Raises:
        DsmdError: an unknown split name, or one image given two different splits (after
            mapping: ``train`` and ``restval`` agree); the message names the image and both.
    """
    given: dict[str, str] = {}
    named: dict[str, str] = {}  # image -> the split name as first given, for messages
    for image, _, split in rows:
        if not split:
            continue
        if split not in SPLIT_ALIASES:
            raise DsmdError(
                f"image {image} in {source}: unknown split '{split}'. Use one of: {', '.join(SPLIT_ALIASES)}."
            )
        if given.setdefault(image, SPLIT_ALIASES[split]) != SPLIT_ALIASES[split]:
            raise DsmdError(
                f"image {image} in {source} is listed under two splits, '{named[image]}' and "
                f"'{split}'. Give each image one split (remove or fix one of its entries)."
            )
        named.setdefault(image, split)
    return given


def _assign_splits(images: list[str], cfg: DataConfig) -> dict[str, str]:
    """Seeded split of the sorted unique images into test, val, train (in that order)."""
    order = sorted(set(images))
    random.Random(cfg.split_seed).shuffle(order)
    n = len(order)
    n_test = round(n * cfg.test_fraction)
    n_val = round(n * cfg.val_fraction)
    if n - n_test - n_val < 1:
        raise DsmdError(
            f"{n} images are too few for val_fraction={cfg.val_fraction}, test_fraction={cfg.test_fraction}."
        )
    split = {}
    for k, image in enumerate(order):
        split[image] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return split


def _load(cfg: DataConfig) -> tuple[dict[str, CaptionedImages], bool]:
    rows, source = list_rows(cfg)
    _check_rows(rows, str(source))
    if not 0 <= cfg.val_fraction < 1 or not 0 <= cfg.test_fraction < 1:
        raise DsmdError("data.val_fraction and data.test_fraction must lie in [0, 1).")
    given = _given_splits(rows, str(source))
    images = [r[0] for r in rows]
    unique = set(images)
    if given and len(given) < len(unique):
        missing = next(image for image in images if image not in given)
        raise DsmdError(
            f"{len(given)} of the {len(unique)} images in {source} have a split and the others do not "
            f"(e.g. {missing}). Give every image a split, or none (then data.split_seed splits them)."
        )
    use_given = len(given) == len(unique)
    split_of = given if use_given else _assign_splits(images, cfg)
    keep = cfg.eval_captions_per_image
    if keep is not None and keep < 1:
        raise DsmdError(f"data.eval_captions_per_image must be at least 1 or null, got {keep}.")
    out = {}
    for split in SPLITS:
        pairs = [(image, caption) for image, caption, _ in rows if split_of[image] == split]
        if keep is not None and split != "train":
            pairs = _first_captions(pairs, keep)
        out[split] = _group(pairs, f"{cfg.kind}/{split}")
    return out, use_given


def _first_captions(pairs: list[tuple[str, str]], keep: int) -> list[tuple[str, str]]:
    """The first ``keep`` captions of each image, in the source's order."""
    seen: dict[str, int] = {}
    out = []
    for image, caption in pairs:
        if seen.get(image, 0) < keep:
            seen[image] = seen.get(image, 0) + 1
            out.append((image, caption))
    return out


def load_dataset(cfg: DataConfig) -> dict[str, CaptionedImages]:
    """List, validate and split the dataset the config describes.

    Splits given by the data (a ``split`` field or column, Karpathy's splits, DatasetDict
    splits, shard names) are used when every image has one; when none has one the images are
    split from ``data.split_seed`` (:func:`_assign_splits`); a mix is refused. Within a split,
    images and captions keep the source's order.

    Returns:
        ``{"train": ..., "val": ..., "test": ...}``; every image is in exactly one split.

    Raises:
        DsmdError: missing folder, manifest, shard or image; empty caption; unknown kind or
            split; an image given two different splits; a column the data lacks; a field of
            the wrong type or text that is not UTF-8 (:mod:`dsmd.data.formats`).
    """
    return _load(cfg)[0]


def load_split(cfg: DataConfig, split: str) -> CaptionedImages:
    """One split of :func:`load_dataset`; a split name that does not exist, or is empty, is refused."""
    if split not in SPLITS:
        raise DsmdError(f"unknown split '{split}'. Use one of: {', '.join(SPLITS)}.")
    splits, given = _load(cfg)
    data = splits[split]
    if data.num_images == 0:
        fix = f"{cfg.manifest} assigns no image to it" if given else "adjust data.val_fraction / data.test_fraction"
        raise DsmdError(f"split '{split}' of {cfg.kind} is empty: {fix}.")
    return data
