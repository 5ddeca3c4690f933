"""Dataset formats: each lists ``(image reference, caption, split)`` rows for ``data.kind``.

=============  ==========================================================================
``kind``       ``data.manifest`` / ``data.root``
=============  ==========================================================================
tuxpaint       ``root``: the Tux Paint stamps folder (:mod:`.tuxpaint`)
folder         ``root``: your images, each with ``NAME.txt`` captions beside it (:mod:`.folder`)
manifest       a JSONL or CSV file; ``root``: base of relative paths (:mod:`.manifest`)
karpathy       ``dataset_flickr30k.json`` / ``dataset_coco.json``; ``root``: the image
               folder (:mod:`.karpathy`)
hf             a ``save_to_disk`` folder, or parquet file(s) / glob (:mod:`.hf`)
webdataset     tar shards: brace pattern, glob or folder (:mod:`.webdataset`)
=============  ==========================================================================

:func:`dsmd.data.datasets.load_dataset` validates the rows, assigns splits and groups the
captions by image.
"""

from __future__ import annotations

from dsmd.config import DataConfig
from dsmd.data.formats._common import Row, given_root
from dsmd.errors import DsmdError

KINDS = ("tuxpaint", "folder", "manifest", "karpathy", "hf", "webdataset")


def list_rows(cfg: DataConfig) -> tuple[list[Row], str]:
    """The rows of the dataset ``cfg`` describes, and the source to name in messages.

    Raises:
        DsmdError: unknown kind, no ``data.manifest`` where one is needed, or the format's
            own errors.
    """
    if cfg.kind == "tuxpaint":
        from dsmd.data.formats.tuxpaint import list_tuxpaint

        return list_tuxpaint(cfg.root, cfg.exclude), cfg.root
    if cfg.kind == "folder":
        from dsmd.data.formats.folder import list_folder

        return list_folder(cfg.root, cfg.exclude), cfg.root
    if cfg.kind not in KINDS:
        raise DsmdError(f"unknown data.kind '{cfg.kind}'. Use one of: {', '.join(KINDS)}.")
    if not cfg.manifest:
        what = {
            "manifest": "a JSONL or CSV file",
            "karpathy": "dataset_flickr30k.json or dataset_coco.json",
            "hf": "a save_to_disk folder or parquet files",
            "webdataset": "a shard pattern",
        }[cfg.kind]
        raise DsmdError(f"data.kind={cfg.kind} needs data.manifest=PATH ({what}).")
    root = given_root(cfg)
    if cfg.kind == "manifest":
        from dsmd.data.formats.manifest import list_manifest

        return list_manifest(cfg.manifest, root), cfg.manifest
    if cfg.kind == "karpathy":
        from dsmd.data.formats.karpathy import list_karpathy

        return list_karpathy(cfg.manifest, root), cfg.manifest
    if cfg.kind == "hf":
        from dsmd.data.formats.hf import list_hf

        return list_hf(cfg.manifest, root, cfg.image_column, cfg.caption_column), cfg.manifest
    from dsmd.data.formats.webdataset import list_webdataset

    return list_webdataset(cfg.manifest), cfg.manifest
