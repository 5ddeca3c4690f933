"""What every format's listing returns, the split names they share, and text-reading helpers."""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from dsmd.config import DataConfig
from dsmd.errors import DsmdError

# (image reference, caption, split or "" when the source gives none)
Row = tuple[str, str, str]

# Split names found in datasets, mapped to ours. Karpathy's "restval" (COCO images outside
# the 5K val/test sets) is training data; Hugging Face names the validation split "validation".
SPLIT_ALIASES = {
    "train": "train",
    "restval": "train",
    "val": "val",
    "validation": "val",
    "valid": "val",
    "test": "test",
}


def split_from_name(path: str | Path) -> str:
    """The split a file's name states (``train-000001.tar``, ``validation-0.parquet``), else "".

    Only the file name is read (split on ``-``, ``_``, ``.``), never its folders: a folder
    such as ``test_runs/`` says nothing about the data. A name with two split words gives "".
    """
    stem = Path(str(path)).name
    found = {SPLIT_ALIASES[t] for t in re.split(r"[^A-Za-z0-9]+", stem.lower()) if t in SPLIT_ALIASES}
    return found.pop() if len(found) == 1 else ""


def given_root(cfg: DataConfig) -> Path | None:
    """``data.root`` when the user set it (the default is the Tux Paint folder), else None."""
    return Path(cfg.root).expanduser() if cfg.root and cfg.root != DataConfig.root else None


def resolve(path: str, base: Path) -> str:
    """``path`` made absolute against ``base`` (``~`` expanded)."""
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else base / p)


def decode_utf8(data: bytes, source: str | Path) -> str:
    """``data`` decoded as UTF-8, a leading byte-order mark dropped.

    Raises:
        DsmdError: ``source:LINE: not UTF-8 text (byte OFFSET is 0xNN) ...``, for the first
            invalid byte (offset counted from the start of ``data``, lines from 1).
    """
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = skip + exc.start
        line = data.count(b"\n", 0, at) + 1
        raise DsmdError(
            f"{source}:{line}: not UTF-8 text (byte {at} is 0x{data[at]:02x}). Save the file "
            "as UTF-8 (e.g. iconv -f latin1 -t utf-8)."
        ) from None


def read_utf8(path: Path) -> str:
    """The text of a UTF-8 file (:func:`decode_utf8`)."""
    return decode_utf8(path.read_bytes(), path)


def json_kind(value) -> str:
    """What a JSON value is, for messages: ``a number (12)``, ``an object``, ``null``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return "a string"
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def check_encodable(text: str, where: str, what: str = "caption") -> None:
    """Refuse ``text`` that cannot be written as UTF-8 (a lone surrogate such as ``\\udcff``, left by
    text decoded with ``errors="surrogateescape"`` or a JSON escape), naming ``where``.

    Raises:
        DsmdError: one line naming ``where``, the offending character and the fix.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end].encode("unicode_escape").decode("ascii")
        raise DsmdError(
            f"{where}: the {what} {text[:40]!r} holds {bad}, a lone surrogate that is not text and cannot be "
            "written as UTF-8 (it comes from bytes decoded with errors='surrogateescape', or a JSON \\ud800-\\udfff "
            "escape). Decode the source with its real encoding, or fix or remove the entry."
        ) from None
