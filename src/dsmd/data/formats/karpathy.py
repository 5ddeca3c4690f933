"""``data.kind=karpathy``: Karpathy's split files for Flickr30k and COCO.

``data.manifest`` is ``dataset_flickr30k.json`` or ``dataset_coco.json``: ``{"images": [...]}``,
each image ``{"filename", "filepath" (COCO: train2014 / val2014; Flickr30k: none or ""),
"split" (train / val / test / restval), "sentences": [{"raw": caption, ...}, ...]}``.
``data.root`` is the image folder (default: the JSON file's folder); an image's path is
``root/filepath/filename``. The file is read as UTF-8 (a leading byte-order mark is dropped);
``filename``, ``filepath`` and ``split`` must be strings and every sentence's ``raw`` a
non-empty string, else the error names the image's index in ``images``.

The splits are Karpathy's, in file order: COCO's ``restval`` joins ``train``; the test split is
exactly the standard one (Flickr30k 1K: 1,000 images / 5,000 captions; COCO 5K: 5,000 images
and their captions, 5 each but for the few with more). Every sentence is kept: most images
have 5, a few COCO images have 6 or 7, and all of them become captions of that image.
"""

from __future__ import annotations

import json
from pathlib import Path

from dsmd.data.formats._common import Row, json_kind, read_utf8
from dsmd.errors import DsmdError


def list_karpathy(manifest: str | Path, root: str | Path | None) -> list[Row]:
    """(image path, caption, split) for every sentence of every image, in file order.

    Raises:
        DsmdError: the file is missing, not UTF-8 or not a Karpathy split file; an image
            lacks a ``filename`` or ``split`` or has one that is not a string; a sentence is
            empty or its ``raw`` is not a string.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DsmdError(
            f"Karpathy split file not found: {manifest}. Set data.manifest to "
            "dataset_flickr30k.json or dataset_coco.json."
        )
    try:
        content = json.loads(read_utf8(manifest))
    except json.JSONDecodeError as exc:
        raise DsmdError(f"{manifest} is not valid JSON ({exc}).") from exc
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise DsmdError(
            f"{manifest} is not a Karpathy split file: it has no 'images' list. data.kind=karpathy "
            "reads dataset_flickr30k.json or dataset_coco.json; use data.kind=manifest for JSONL."
        )
    base = Path(root) if root else manifest.parent
    rows: list[Row] = []
    for i, image in enumerate(content["images"]):
        where = f"{manifest}: images[{i}]"
        filename, filepath, split = _fields(image, where)
        path = str(base / filepath / filename)
        sentences = image.get("sentences") or []
        if not isinstance(sentences, list):
            raise DsmdError(f"{where} ({filename}): 'sentences' must be a list, not {json_kind(sentences)}.")
        if not sentences:
            raise DsmdError(f"{where} ({filename}) has no sentences.")
        for k, sentence in enumerate(sentences):
            raw = sentence.get("raw", "") if isinstance(sentence, dict) else ""
            if not isinstance(raw, str) or not raw.strip():
                raise DsmdError(f"{where} ({filename}): sentences[{k}] has no 'raw' text.")
            rows.append((path, raw.strip(), split))
    return rows


def _fields(image, where: str) -> tuple[str, str, str]:
    """``filename``, ``filepath`` ("" when absent) and ``split`` of one image entry, all strings."""
    if not isinstance(image, dict) or not image.get("filename"):
        raise DsmdError(f"{where} has no 'filename'.")
    filename = image["filename"]
    if not isinstance(filename, str):
        raise DsmdError(f"{where}: 'filename' must be a string, not {json_kind(filename)}.")
    if not image.get("split"):
        raise DsmdError(f"{where} ({filename}) has no 'split'.")
    for field in ("filepath", "split"):
        value = image.get(field)
        if value is not None and not isinstance(value, str):
            raise DsmdError(f"{where} ({filename}): '{field}' must be a string, not {json_kind(value)}.")
    return filename, image.get("filepath") or "", image["split"]
