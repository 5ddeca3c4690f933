"""``data.kind=folder``: your own images, each with a caption file beside it.

Under ``data.root`` (searched recursively), every image ``NAME.jpg`` (``.jpeg``, ``.png``,
``.webp``, ``.bmp``, ``.gif``, ``.tif``) has ``NAME.txt`` beside it, one caption a line (blank
lines ignored), UTF-8. Folders named in ``data.exclude`` are skipped at any depth. No split is
given: images are split from ``data.split_seed`` (``data.val_fraction``, ``data.test_fraction``).
"""

from __future__ import annotations

from pathlib import Path

from dsmd.data.formats._common import Row, read_utf8
from dsmd.errors import DsmdError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def list_folder(root: str | Path, exclude: list[str]) -> list[Row]:
    """(image, caption, split='') for every caption line of every image under ``root``.

    Raises:
        DsmdError: ``root`` is not a folder, holds no image, an image has no caption file (named,
            with the count), or a caption file is empty or not UTF-8.
    """
    root = Path(root)
    if not root.is_dir():
        raise DsmdError(
            f"data.root={root} is not a folder. Point data.root at the folder of your images "
            "(each NAME.jpg with a NAME.txt caption file beside it)."
        )
    images = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part in exclude for part in p.relative_to(root).parts[:-1])
    )
    if not images:
        raise DsmdError(f"no images under {root} (looked for {', '.join(IMAGE_EXTENSIONS)}).")
    missing = [p for p in images if not p.with_suffix(".txt").is_file()]
    if missing:
        raise DsmdError(
            f"{len(missing)} of the {len(images)} images under {root} have no caption file, e.g. "
            f"{missing[0]} (expected {missing[0].with_suffix('.txt')}). Write one caption a line in "
            "NAME.txt beside each image, or move the image out of the folder."
        )
    rows = []
    for image in images:
        txt = image.with_suffix(".txt")
        captions = [line.strip() for line in read_utf8(txt).splitlines() if line.strip()]
        if not captions:
            raise DsmdError(f"{txt} holds no caption. Write one caption a line, or remove {image.name}.")
        rows += [(str(image), caption, "") for caption in captions]
    return rows
