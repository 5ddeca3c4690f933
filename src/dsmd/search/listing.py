"""What goes into an index: image files under folders or listed in a file, captions listed in a file."""

from __future__ import annotations

import json
from pathlib import Path

from dsmd.errors import DsmdError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _from_list(path: Path) -> list[str]:
    """Paths listed in ``path``: a text file (one a line), a JSONL manifest (``image`` fields) or a
    CSV with an ``image`` column; relative paths against the file's folder."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DsmdError(f"{path} is not UTF-8 text (byte {exc.start}). Save it as UTF-8.") from exc
    if path.suffix.lower() == ".jsonl":
        found = []
        for n, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    image = json.loads(line).get("image")
                except (json.JSONDecodeError, AttributeError) as exc:
                    raise DsmdError(f"{path}:{n}: not a JSON object with an 'image' field.") from exc
                if not isinstance(image, str):
                    raise DsmdError(f"{path}:{n}: 'image' must be a path (a string).")
                found.append(image)
    elif path.suffix.lower() == ".csv":
        import csv
        import io

        rows = list(csv.DictReader(io.StringIO(text)))
        if rows and "image" not in rows[0]:
            raise DsmdError(f"{path}: a CSV list needs an 'image' column.")
        found = [row["image"] for row in rows]
    else:
        found = [line.strip() for line in text.splitlines() if line.strip()]
    return [str(p if Path(p).is_absolute() else (path.parent / p)) for p in dict.fromkeys(found)]


def list_images(sources: list[str | Path]) -> list[str]:
    """Image paths under each folder (recursively, sorted) or listed in each file, without repeats.

    Raises:
        DsmdError: a source that does not exist, or no image at all.
    """
    found: dict[str, None] = {}
    for source in map(Path, sources):
        if source.is_dir():
            files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            found.update(dict.fromkeys(str(p) for p in files))
        elif source.is_file() and source.suffix.lower() in IMAGE_EXTENSIONS:
            found[str(source)] = None
        elif source.is_file():
            found.update(dict.fromkeys(_from_list(source)))
        else:
            raise DsmdError(f"{source} does not exist. Give image folders, image files, or a file listing images.")
    if not found:
        raise DsmdError(
            f"no images found in {', '.join(map(str, sources))} (looked for "
            f"{', '.join(IMAGE_EXTENSIONS)}). Point --images at folders that hold images."
        )
    return list(found)


def list_texts(path: str | Path) -> list[str]:
    """Captions in ``path``, one a line (blank lines skipped, repeats kept once).

    Raises:
        DsmdError: no such file, not UTF-8, or no caption.
    """
    path = Path(path)
    if not path.is_file():
        raise DsmdError(f"caption file not found: {path}. Give a UTF-8 text file with one caption a line.")
    try:
        texts = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise DsmdError(f"{path} is not UTF-8 text (byte {exc.start}). Save it as UTF-8.") from exc
    if not texts:
        raise DsmdError(f"{path} holds no caption. Write one caption a line.")
    return list(dict.fromkeys(texts))
