"""Pools of images without captions and captions without images (``data.unpaired_images``,
``data.unpaired_texts``; :mod:`dsmd.config.unpaired`).

A pool is listed in the source's order with repeats dropped (the first kept) and cut to
``limit``, and returned as a :class:`~dsmd.data.datasets.CaptionedImages` so that the
extraction and the store treat it like a split: an image pool has images and no captions; a
text pool has captions and no images, each caption's ``caption_image`` -1 (no image). Its
:meth:`~dsmd.data.datasets.CaptionedImages.fingerprint` keys its table in the store.

A pool must not hold what the student is evaluated on: :func:`load_pools` refuses a pool
image that is a val or test image of the paired data (the same file), and a pool caption that
is a val or test caption (compared lower-cased, whitespace collapsed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from dsmd.config import DataConfig
from dsmd.config.unpaired import UnpairedImagesConfig, UnpairedTextsConfig
from dsmd.data.datasets import CaptionedImages
from dsmd.data.formats._common import check_encodable, json_kind, read_utf8, resolve
from dsmd.data.formats.folder import IMAGE_EXTENSIONS
from dsmd.data.images import image_exists, parse_ref, tar_ref
from dsmd.errors import DsmdError

NO_IMAGE = -1  # caption_image of a caption without an image


def _folder_images(cfg: UnpairedImagesConfig) -> list[str]:
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DsmdError(f"data.unpaired_images.path={root} is not a folder (data.unpaired_images.kind=folder).")
    return [
        str(p)
        for p in sorted(root.rglob("*"))
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part in cfg.exclude for part in p.relative_to(root).parts[:-1])
    ]


def _jsonl_values(path: str, column: str, section: str) -> Iterator[tuple[str, object]]:
    """``(FILE:LINE, value of column)`` for each non-blank line of a JSONL file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DsmdError(f"{section}.path={file} not found (a JSONL file, {section}.kind=jsonl).")
    for i, line in enumerate(read_utf8(file).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{file}:{i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DsmdError(f"{where}: not valid JSON ({exc}). Use one JSON object a line.") from exc
        if not isinstance(obj, dict):
            raise DsmdError(f"{where}: expected a JSON object with '{column}', not {json_kind(obj)}.")
        if obj.get(column) in (None, ""):
            raise DsmdError(f"{where}: no '{column}' ({section}.column). Every line needs one.")
        yield where, obj[column]


def _jsonl_images(cfg: UnpairedImagesConfig) -> list[str]:
    base = Path(cfg.root).expanduser() if cfg.root else Path(cfg.path).expanduser().parent
    images = []
    for where, value in _jsonl_values(cfg.path, cfg.column, "data.unpaired_images"):
        if not isinstance(value, str):
            raise DsmdError(f"{where}: '{cfg.column}' must be a string (an image's path), not {json_kind(value)}.")
        images.append(resolve(value, base))
    return images


def _shard_samples(pattern: str):
    from dsmd.data.formats.webdataset import expand_shards, iter_samples

    for shard in expand_shards(pattern):
        for sample in iter_samples(shard):
            yield shard, sample


def list_image_pool(cfg: UnpairedImagesConfig) -> list[str]:
    """The pool's images (file paths or ``SHARD::MEMBER`` references), repeats dropped, cut to ``limit``.

    Raises:
        DsmdError: a missing folder, file or shard; a malformed line (named ``FILE:LINE``); a
            listed image that does not exist; an empty pool.
    """
    if cfg.kind == "folder":
        images = _folder_images(cfg)
    elif cfg.kind == "jsonl":
        images = _jsonl_images(cfg)
    else:
        images = [tar_ref(shard, s.image) for shard, s in _shard_samples(cfg.path) if s.image is not None]
    images = list(dict.fromkeys(images))[: cfg.limit]
    if not images:
        raise DsmdError(f"data.unpaired_images: no images in {cfg.path} (kind {cfg.kind}).")
    containers: dict[str, bool] = {}
    missing = [p for p in images if not image_exists(p, containers)]
    if missing:
        raise DsmdError(
            f"data.unpaired_images: image not found: {missing[0]} ({len(missing)} of {len(images)} missing). "
            "Fix the path (relative paths are read against data.unpaired_images.root, else the file's folder)."
        )
    return images


def _text_values(cfg: UnpairedTextsConfig) -> Iterator[str]:
    if cfg.kind == "lines":
        file = Path(cfg.path).expanduser()
        if not file.is_file():
            raise DsmdError(f"data.unpaired_texts.path={file} not found (a text file, one caption a line).")
        yield from read_utf8(file).splitlines()
    elif cfg.kind == "jsonl":
        for where, value in _jsonl_values(cfg.path, cfg.column, "data.unpaired_texts"):
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise DsmdError(
                    f"{where}: '{cfg.column}' must be a string or a list of strings, not {json_kind(value)}."
                )
            yield from values
    elif cfg.kind == "vocabulary":
        yield from (cfg.template.format(word) for word in vocabulary_words(cfg.path))
    else:
        for _, sample in _shard_samples(cfg.path):
            yield from sample.captions


def vocabulary_words(source: str) -> list[str]:
    """The whole words of a tokenizer's vocabulary (``minilm`` or a folder or hub name): its tokens
    of three or more ASCII letters, in the vocabulary's order (no ``##`` pieces, no special tokens)."""
    from dsmd.runtime.pretrained import MINILM, load_hf_tokenizer, minilm_folder, resolve_hf_source

    key = "data.unpaired_texts.path"
    folder = str(minilm_folder()) if source == MINILM else resolve_hf_source(source, key)
    vocab = load_hf_tokenizer(folder, key).get_vocab()
    return [w for w in sorted(vocab, key=vocab.get) if w.isascii() and w.isalpha() and len(w) >= 3]


def list_text_pool(cfg: UnpairedTextsConfig) -> list[str]:
    """The pool's captions, stripped, blank ones skipped, repeats dropped, cut to ``limit``.

    Raises:
        DsmdError: a missing file or shard, a malformed line (named ``FILE:LINE``), text that is
            not UTF-8, an empty pool.
    """
    captions = list(dict.fromkeys(c.strip() for c in _text_values(cfg) if c.strip()))[: cfg.limit]
    for k, caption in enumerate(captions, start=1):
        check_encodable(caption, f"data.unpaired_texts ({cfg.path}, caption {k})")
    if not captions:
        raise DsmdError(f"data.unpaired_texts: no captions in {cfg.path} (kind {cfg.kind}).")
    return captions


def _same_file(path: str) -> str:
    return path if parse_ref(path) is not None else os.path.realpath(path)


def _same_text(caption: str) -> str:
    return " ".join(caption.lower().split())


def _check_apart(pools: dict[str, CaptionedImages], dataset: dict[str, CaptionedImages]) -> None:
    """Refuse pool items that are val or test items of the paired data."""
    held = [dataset[s] for s in ("val", "test") if s in dataset]
    if "image" in pools:
        evaluated = {_same_file(p) for d in held for p in d.image_paths}
        clash = [p for p in pools["image"].image_paths if _same_file(p) in evaluated]
        if clash:
            raise DsmdError(
                f"data.unpaired_images: {len(clash)} images of the pool are val or test images of the paired data "
                f"(e.g. {clash[0]}); the student must not learn the images it is evaluated on. Remove them from the pool."
            )
    if "text" in pools:
        evaluated = {_same_text(c) for d in held for c in d.captions}
        clash = [c for c in pools["text"].captions if _same_text(c) in evaluated]
        if clash:
            raise DsmdError(
                f"data.unpaired_texts: {len(clash)} captions of the pool are val or test captions of the paired data "
                f"(e.g. {clash[0]!r}); the student must not learn the queries it is evaluated on. Remove them."
            )


def load_pools(cfg: DataConfig, dataset: dict[str, CaptionedImages] | None = None) -> dict[str, CaptionedImages]:
    """The pools ``cfg`` names: ``{"image": ..., "text": ...}``, each only when its kind is not ``none``.

    Args:
        dataset: the paired splits; when given, pools holding their val or test items are refused.

    Raises:
        DsmdError: see :func:`list_image_pool` and :func:`list_text_pool`; a pool that holds val
            or test items.
    """
    pools = {}
    if cfg.unpaired_images.kind != "none":
        pools["image"] = CaptionedImages(list_image_pool(cfg.unpaired_images), [], [], "unpaired/images")
    if cfg.unpaired_texts.kind != "none":
        captions = list_text_pool(cfg.unpaired_texts)
        pools["text"] = CaptionedImages([], captions, [NO_IMAGE] * len(captions), "unpaired/captions")
    if dataset is not None:
        _check_apart(pools, dataset)
    return pools
