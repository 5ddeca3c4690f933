"""``data.kind=manifest``: a JSONL or CSV file of image paths and captions.

JSONL: one object a line, ``{"image": PATH, "captions": [..]}`` (or ``"caption": str``),
optional ``"split"``. CSV: a header with ``image`` and ``caption`` columns (one row per
caption), optional ``split``. Relative paths are resolved against ``data.root`` when set,
else the manifest's folder.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from dsmd.data.formats._common import Row, resolve
from dsmd.errors import DsmdError


def list_manifest(manifest: str | Path, root: str | Path | None) -> list[Row]:
    """(image, caption, split) rows from a JSONL or CSV manifest, in file order."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DsmdError(f"dataset manifest not found: {manifest}. Set data.manifest to a JSONL or CSV file.")
    base = Path(root) if root else manifest.parent
    rows: list[Row] = []

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
            rows.append((resolve(image, base), caption.strip(), split or ""))

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
