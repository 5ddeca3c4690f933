"""The pools of unpaired data in a feature store: their tables, and adding them to a store.

The teacher encodes a pool like a split (:mod:`dsmd.extraction.extractor`: same chunks, same
resume, same torchrun sharing), into the tables ``unpaired_image`` and ``unpaired_text``
(:data:`~dsmd.store.manifest.UNPAIRED_TABLES`), recorded under the manifest's ``unpaired`` with
each pool's fingerprint and counts. A config without pools expects no ``unpaired`` entry, so any
store of its data serves it, with pools or without.

A finished store that matches a config in everything but lacks some of its pools is *extended*
(no ``--overwrite`` needed): its files are verified, hard-linked (copied where links are not
possible) into ``STORE.partial/`` as finished splits, only the missing pools are encoded, and the
store is replaced by the extended one, which keeps every table it had. A pool the store holds
with another fingerprint is a different store: that needs ``--overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from dsmd.config import RunConfig
from dsmd.data.datasets import CaptionedImages
from dsmd.data.unpaired import load_pools
from dsmd.runtime.files import write_json_atomic
from dsmd.store import FeatureStore
from dsmd.store.manifest import MANIFEST, UNPAIRED_TABLES


def pool_tables(cfg: RunConfig, dataset: dict[str, CaptionedImages]) -> dict[str, CaptionedImages]:
    """The config's pools by table name (``{}`` without pools), checked apart from the val and test data."""
    return {UNPAIRED_TABLES[modality]: pool for modality, pool in load_pools(cfg.data, dataset).items()}


def pool_records(tables: dict[str, CaptionedImages]) -> dict[str, dict]:
    """The manifest's ``unpaired`` entry of ``tables``: fingerprint and counts of each."""
    return {
        table: {"fingerprint": pool.fingerprint(), "num_images": pool.num_images, "num_captions": len(pool)}
        for table, pool in tables.items()
    }


def lacks_pools(cfg: RunConfig, out: Path) -> bool:
    """Whether the finished store at ``out`` lacks a pool table ``cfg`` names (by name alone: the
    extraction then writes, and takes the store's lock)."""
    pools = (("image", cfg.data.unpaired_images), ("text", cfg.data.unpaired_texts))
    wanted = [UNPAIRED_TABLES[modality] for modality, pool in pools if pool.kind != "none"]
    if not wanted or not (out / MANIFEST).is_file():
        return False
    try:
        have = json.loads((out / MANIFEST).read_text()).get("unpaired") or {}
    except (OSError, ValueError, AttributeError):
        return False  # a corrupt manifest is reported when the store is read
    return any(table not in have for table in wanted)


def drop_stale_pools(partial: Path, pending: dict, expected: dict) -> None:
    """Remove from an interrupted extraction's folder what it saved of pools that changed since."""
    before, now = pending.get("unpaired") or {}, expected.get("unpaired") or {}
    for table, info in before.items():
        if now.get(table) == info:
            continue
        shutil.rmtree(partial / "chunks" / table, ignore_errors=True)
        for stale in [
            partial / f"{table}.files.json",
            *partial.glob(f"{table}.safetensors"),
            *partial.glob(f"{table}-*-of-*.safetensors"),
        ]:
            stale.unlink(missing_ok=True)


def _link(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def seed_from_store(out: Path, partial: Path, log) -> None:
    """Put the finished store's tables into ``partial`` as finished splits (see the module docstring).

    Raises:
        DsmdError: a file of the store is corrupt (sha256 or values).
    """
    store = FeatureStore.open(out)
    store.verify(progress=False)
    for name in store.tables():
        marker = partial / f"{name}.files.json"
        if marker.is_file():
            continue
        records = store.files(name)
        for record in records:
            _link(out / record["file"], partial / record["file"])
        write_json_atomic(marker, records)
    log(f"extending feature store {out} (its {', '.join(store.tables())} kept): encoding the new pools only")


__all__ = ["drop_stale_pools", "lacks_pools", "pool_records", "pool_tables", "seed_from_store"]
