"""What every format's listing returns, and the split names they share."""

from __future__ import annotations

import re
from pathlib import Path

from dsmd.config import DataConfig

# (image reference, caption, split or "" when the source gives none)
Row = tuple[str, str, str]

# Split names found in datasets, mapped to ours. Karpathy's "restval" (COCO images outside
# the 5K val/test sets) is training data; Hugging Face names the validation split "validation".
SPLIT_ALIASES = {"train": "train", "restval": "train", "val": "val", "validation": "val", "valid": "val",
                 "test": "test"}


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
