"""Where the imported features of each split are: files, folders, and the entries inside them.

Used by :mod:`dsmd.extraction.importer` (see its docstring for the layouts and entry names).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsmd.data.datasets import SPLITS
from dsmd.errors import DsmdError
from dsmd.extraction.feature_files import EXTENSIONS, SourceArray, read_entries


def pick_entry(
    entries: dict[str, Callable[[], Any]],
    file: Path,
    split: str,
    names: tuple[str, ...],
    what: str,
    option: str,
    alone_ok: bool,
    prefix_only: bool,
) -> SourceArray:
    """The entry of ``file`` holding ``what`` (``image``/``text``) features of ``split``.

    ``SPLIT/NAME`` entries are preferred to ``NAME`` ones (only they count in a file holding
    every split, ``prefix_only``); with ``alone_ok`` a file's only entry is taken whatever
    its name.
    """
    prefixed = [f"{split}/{n}" for n in names if f"{split}/{n}" in entries]
    plain = [] if prefix_only else [n for n in names if n in entries]
    found = prefixed or plain
    looked_for = [f"{split}/{n}" for n in names] + ([] if prefix_only else list(names))
    if len(found) > 1:
        raise DsmdError(f"{file} has several {what} entries ({', '.join(found)}). Choose one with {option}.")
    if found:
        key = found[0]
    elif alone_ok and len(entries) == 1:
        key = next(iter(entries))
    else:
        have = ", ".join(sorted(entries)[:12]) or "none"
        raise DsmdError(
            f"{file} has no {what} features for split '{split}': looked for entry "
            f"{' or '.join(repr(n) for n in looked_for)}; it has: {have}. Name the entry with {option}."
        )
    return SourceArray(file, key, entries[key]())


@dataclass
class SplitFiles:
    image: Path
    text: Path


def _find(folder: Path, stem: str) -> Path | None:
    hits = [folder / f"{stem}{ext}" for ext in EXTENSIONS if (folder / f"{stem}{ext}").is_file()]
    if len(hits) > 1:
        raise DsmdError(f"{folder} has several files for '{stem}' ({', '.join(p.name for p in hits)}). Keep one.")
    return hits[0] if hits else None


def _folder_files(folder: Path) -> dict[str, SplitFiles]:
    found = {}
    for split in SPLITS:
        both, image, text = _find(folder, split), _find(folder, f"{split}_image"), _find(folder, f"{split}_text")
        if both and (image or text):
            raise DsmdError(
                f"{folder} has both {both.name} and {(image or text).name} for split '{split}'. Keep one layout."
            )
        if both:
            found[split] = SplitFiles(both, both)
        elif image and text:
            found[split] = SplitFiles(image, text)
        elif image or text:
            missing = f"{split}_text" if image else f"{split}_image"
            raise DsmdError(f"{folder} has {(image or text).name} but no {missing}.EXT for split '{split}'.")
    if not found:
        have = ", ".join(sorted(p.name for p in folder.iterdir())[:12]) or "nothing"
        raise DsmdError(
            f"no feature files in {folder}: expected per split SPLIT.EXT or SPLIT_image.EXT + SPLIT_text.EXT "
            f"(SPLIT train/val/test, EXT {'/'.join(EXTENSIONS)}); it has {have}."
        )
    return found


def resolve_files(
    source: Path, files: dict[str, list[str | Path]] | None, trust_pickle: bool, opened: dict[Path, dict]
) -> tuple[dict[str, SplitFiles], bool]:
    """Per split, the image and text files; and whether entries must carry the split prefix.

    A file read to find out (one file holding every split) is kept in ``opened``.
    """
    if files:
        out = {}
        for split, paths in files.items():
            if split not in SPLITS:
                raise DsmdError(f"unknown split '{split}'. Use one of: {', '.join(SPLITS)}.")
            if not 1 <= len(paths) <= 2:
                raise DsmdError(
                    f"split '{split}' takes one file (image and text entries) or two "
                    f"(IMAGE TEXT), got {len(paths)}. Put key=value overrides before --{split}."
                )
            out[split] = SplitFiles(Path(paths[0]), Path(paths[-1]))
        return out, False
    if source.is_dir():
        return _folder_files(source), False
    if not source.exists():
        raise DsmdError(f"features not found: {source}. Set teacher.name_or_path to a feature file or folder.")
    entries = opened[source] = read_entries(source, trust_pickle)
    present = {split for split in SPLITS if any(k.startswith(f"{split}/") for k in entries)}
    if not present:
        raise DsmdError(
            f"{source} holds no per-split entries (train/image, train/text, val/image, ...): it has "
            f"{', '.join(sorted(entries)[:12]) or 'nothing'}. For one split's files use --train FILE [FILE]."
        )
    return {split: SplitFiles(source, source) for split in SPLITS if split in present}, True
