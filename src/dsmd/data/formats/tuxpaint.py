"""``data.kind=tuxpaint``: the Debian photo stamps, ``NAME.png`` beside ``NAME.txt``.

The caption is the first line of ``NAME.txt`` (one caption per image), which must be UTF-8
(the translations on the following lines are not read); no split is given, so images are
split from ``data.split_seed``.
"""

from __future__ import annotations

from pathlib import Path

from dsmd.data.formats._common import Row, decode_utf8
from dsmd.errors import DsmdError


def list_tuxpaint(root: str | Path, exclude: list[str]) -> list[Row]:
    """(image, caption, split='') for each ``NAME.png`` with a first-line caption in ``NAME.txt``.

    Images under a folder named in ``exclude`` (at any depth: ``food/fruit/cartoon``) and
    stamps without a caption file (the ``*_mirror.png`` variants) are skipped.

    Raises:
        DsmdError: ``root`` is not a folder, or a caption line is not UTF-8 (``FILE:1: ...``).
    """
    root = Path(root)
    if not root.is_dir():
        raise DsmdError(
            f"Tux Paint stamps not found at {root}. Install them with "
            "`apt-get install -y tuxpaint-stamps-default` (scripts/setup.sh does), "
            "or set data.root to the stamps folder."
        )
    rows = []
    for png in sorted(root.rglob("*.png")):
        if any(part in exclude for part in png.relative_to(root).parts[:-1]):
            continue
        txt = png.with_suffix(".txt")
        if not txt.is_file():
            continue
        caption = decode_utf8(txt.read_bytes().split(b"\n", 1)[0], txt).strip()
        if caption:
            rows.append((str(png), caption, ""))
    return rows
