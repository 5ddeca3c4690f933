"""``data.kind=manifest``: a JSONL or CSV file of image paths and captions.

JSONL: one object a line, ``{"image": PATH, "captions": [str, ...]}`` or ``{"image": PATH,
"caption": str}`` (either field takes a string or a list of strings; not both in one line),
optional ``"split"``, a string (train / val / validation / test / restval). Other fields are
ignored. CSV: a header with ``image`` and ``caption`` columns (one row per caption), optional
``split``; every row has as many fields as the header (a caption with a comma is quoted).

Both are read as UTF-8; a leading byte-order mark (as Excel writes) is dropped. Relative paths
are resolved against ``data.root`` when set, else the manifest's folder. Every error names the
file and the line (``FILE:LINE: ...``): a field of the wrong type, a missing image path or
caption, an empty caption, bytes that are not UTF-8.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

from dsmd.data.formats._common import SPLIT_ALIASES, Row, check_encodable, json_kind, read_utf8, resolve
from dsmd.errors import DsmdError

# (where, image path, captions, split or "")
Entry = tuple[str, str, list[str], str]
_EXTRA = "\0extra"  # csv.DictReader's key for fields beyond the header


def list_manifest(manifest: str | Path, root: str | Path | None) -> list[Row]:
    """(image, caption, split) rows from a JSONL or CSV manifest, in file order.

    Raises:
        DsmdError: the manifest is missing or not UTF-8; a line is not valid JSON or CSV, has
            a field of the wrong type, no image path, no caption or an empty one; a CSV
            without the header. The message names the file and the line.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DsmdError(f"dataset manifest not found: {manifest}. Set data.manifest to a JSONL or CSV file.")
    base = Path(root) if root else manifest.parent
    text = read_utf8(manifest)
    entries = _csv_entries(text, manifest) if manifest.suffix.lower() == ".csv" else _jsonl_entries(text, manifest)
    return [(resolve(image, base), caption, split) for _, image, captions, split in entries for caption in captions]


def _entry(where: str, image, captions: list[str], split) -> Entry:
    """One checked line: ``image`` a non-empty string, ``split`` a string or None, and at least
    one caption, none empty (captions are stripped)."""
    if image is None or image == "":
        raise DsmdError(f"{where}: no image path. Every row needs an 'image' field.")
    if not isinstance(image, str):
        raise DsmdError(f"{where}: 'image' must be a string (the image's path), not {json_kind(image)}.")
    if split is not None and not isinstance(split, str):
        raise DsmdError(
            f"{where}: 'split' must be a string (one of {', '.join(SPLIT_ALIASES)}), not {json_kind(split)}."
        )
    if not captions:
        raise DsmdError(f"{where}: image {image} has no caption. Add one or remove the row.")
    captions = [caption.strip() for caption in captions]
    if not all(captions):
        raise DsmdError(f"{where}: empty caption for image {image}. Write a caption or remove it.")
    check_encodable(image, where, "image path")
    for caption in captions:
        check_encodable(caption, where)
    return where, image, captions, split or ""


def _jsonl_captions(obj: dict, where: str) -> list[str]:
    """The captions of a JSONL object: ``captions`` or ``caption``, a string or a list of strings."""
    if "captions" in obj and "caption" in obj:
        raise DsmdError(f"{where}: both 'caption' and 'captions' are given. Keep one of them.")
    field = "captions" if "captions" in obj else "caption"
    value = obj.get(field)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise DsmdError(f"{where}: '{field}' must be a string or a list of strings, not {json_kind(value)}.")
    for k, caption in enumerate(value):
        if not isinstance(caption, str):
            raise DsmdError(f"{where}: {field}[{k}] must be a string (a caption), not {json_kind(caption)}.")
    return value


def _jsonl_entries(text: str, manifest: Path) -> Iterator[Entry]:
    # (split on "\n" only: str.splitlines would also split at U+2028 inside a JSON string)
    for i, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{manifest}:{i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DsmdError(f"{where}: not valid JSON ({exc}). Use one JSON object a line.") from exc
        if not isinstance(obj, dict):
            raise DsmdError(f"{where}: expected a JSON object with 'image' and 'captions', not {json_kind(obj)}.")
        yield _entry(where, obj.get("image"), _jsonl_captions(obj, where), obj.get("split"))


def _csv_entries(text: str, manifest: Path) -> Iterator[Entry]:
    reader = csv.DictReader(io.StringIO(text, newline=""), restkey=_EXTRA)
    try:
        header = reader.fieldnames
        if not header or not {"image", "caption"} <= set(header):
            found = ", ".join(header) if header else "nothing"
            raise DsmdError(
                f"{manifest}: a CSV manifest needs a header with 'image' and 'caption' columns (found: {found})."
            )
        for row in reader:
            where = f"{manifest}:{reader.line_num}"
            fields = sum(v is not None for k, v in row.items() if k != _EXTRA) + len(row.get(_EXTRA, []))
            if fields != len(header):
                raise DsmdError(
                    f"{where}: {fields} fields, but the header has {len(header)}. Quote fields that contain commas."
                )
            yield _entry(where, row["image"], [row["caption"]], row.get("split"))
    except csv.Error as exc:
        raise DsmdError(f"{manifest}:{reader.line_num}: not valid CSV ({exc}).") from exc
