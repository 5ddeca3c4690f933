"""Writing a feature store: split files, then the manifest, then the folder renamed into place.

Both ways of building a store (:mod:`dsmd.extraction.extract` runs a teacher,
:mod:`dsmd.extraction.importer` reads features computed elsewhere) write through
:class:`StoreWriter`: files go into ``STORE.partial/``, each written atomically; a split's file
records are kept in ``SPLIT.files.json`` as soon as its files are complete; :meth:`StoreWriter.finish`
writes the sealed manifest (:func:`~dsmd.store.manifest.seal`) and renames the folder to
``STORE``. A store folder that exists is therefore always complete, and an interrupted build
leaves only ``STORE.partial/``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import dsmd
from dsmd.runtime.files import atomic_path, write_json_atomic
from dsmd.store.integrity import stamp_store_files
from dsmd.store.manifest import MANIFEST, seal
from dsmd.store.safetensors_mmap import file_sha256
from dsmd.store.split_features import SplitFeatures


def shard_names(split: str, count: int) -> list[str]:
    """File names of a split written as ``count`` shards: ``SPLIT-00000-of-0000N.safetensors`` ..."""
    return [f"{split}-{k:05d}-of-{count:05d}.safetensors" for k in range(count)]


def write_split(
    folder: str | Path, split: str, features: SplitFeatures, dtype: str = "float32", shard_rows: int | None = None
) -> list[dict]:
    """Write one split's tensors, each file atomically (see the module docstring for the layout).

    Args:
        features: ``image (N_i, D)``, ``text (N_t, D)``, ``caption_image (N_t,)``, optional
            ``image_views (N_i, V, D)``.
        dtype: ``float32`` or ``float16`` (features; ``caption_image`` stays int64).
        shard_rows: None (or 0): one file ``SPLIT.safetensors``; else shards of at most this
            many image rows and caption rows.

    Returns:
        The split's file records for the manifest's ``files``: ``file``, ``images`` and
        ``captions`` (row ranges ``[start, stop)``), ``bytes``, ``sha256``.
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"feature store dtype must be float32 or float16, got {dtype!r}")
    if shard_rows is not None and shard_rows < 0:
        raise ValueError(f"shard_rows must be a positive number of rows (or None), got {shard_rows}")
    tdtype = torch.float16 if dtype == "float16" else torch.float32
    folder = Path(folder)
    n_i, n_t = features.num_images, features.num_captions
    views = features.image_views
    if shard_rows:
        count = max(1, math.ceil(max(n_i, n_t) / shard_rows))
        names = shard_names(split, count)
        ranges = [
            (
                (min(k * shard_rows, n_i), min((k + 1) * shard_rows, n_i)),
                (min(k * shard_rows, n_t), min((k + 1) * shard_rows, n_t)),
            )
            for k in range(count)
        ]
    else:
        names, ranges = [f"{split}.safetensors"], [((0, n_i), (0, n_t))]
    records = []
    for name, ((a, b), (c, d)) in zip(names, ranges, strict=True):
        tensors: dict[str, torch.Tensor] = {}
        if b > a or not shard_rows:
            tensors["image"] = features.image[a:b].to(tdtype).contiguous()
            if views is not None:
                tensors["image_views"] = views[a:b].to(tdtype).contiguous()
        if d > c or not shard_rows:
            tensors["text"] = features.text[c:d].to(tdtype).contiguous()
            tensors["caption_image"] = features.caption_image[c:d].to(torch.long).contiguous()
        path = folder / name
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))
        records.append(
            {
                "file": name,
                "images": [a, b],
                "captions": [c, d],
                "bytes": path.stat().st_size,
                "sha256": file_sha256(path),
            }
        )
    return records


class StoreWriter:
    """Builds the store ``path`` inside ``path.partial/`` (see the module docstring).

    Args:
        path: the store folder to create (or, with ``replace`` at :meth:`finish`, to replace).
        fresh: start from an empty ``.partial`` folder (False: keep what an interrupted build
            left there, to resume).
    """

    def __init__(self, path: str | Path, fresh: bool = True):
        self.path = Path(path)
        self.partial = Path(str(self.path) + ".partial")
        if fresh and self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True, exist_ok=True)

    def _marker(self, split: str) -> Path:
        return self.partial / f"{split}.files.json"

    def has_split(self, split: str) -> bool:
        """Whether ``split``'s files are complete (from this build or an interrupted one)."""
        return self._marker(split).is_file()

    def write_split(
        self, split: str, features: SplitFeatures, dtype: str = "float32", shard_rows: int | None = None
    ) -> list[dict]:
        """Write one split's files (replacing any of an earlier attempt) and record them."""
        for stale in [*self.partial.glob(f"{split}.safetensors"), *self.partial.glob(f"{split}-*-of-*.safetensors")]:
            stale.unlink()
        records = write_split(self.partial, split, features, dtype, shard_rows or None)
        write_json_atomic(self._marker(split), records)
        return records

    def finish(
        self, manifest: dict[str, Any], splits: list[str], replace: bool = False, started: float | None = None
    ) -> Path:
        """Write the manifest (with ``files``, creation time, version, checksum) and move the
        folder into place; an existing store at ``path`` is replaced only with ``replace``.

        Returns:
            The store's path.
        """
        manifest = dict(manifest)
        manifest["files"] = {split: json.loads(self._marker(split).read_text()) for split in splits}
        manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        manifest["dsmd_version"] = dsmd.__version__
        if started is not None:
            manifest["seconds"] = round(time.perf_counter() - started, 2)
        write_json_atomic(self.partial / MANIFEST, seal(manifest))
        for split in splits:
            self._marker(split).unlink()
        for leftover in self.partial.glob("*.json"):
            if leftover.name != MANIFEST:
                leftover.unlink()
        if self.path.exists():
            if not replace:
                raise FileExistsError(self.path)
            shutil.rmtree(self.path)
        self.partial.rename(self.path)
        # Every file's sha256 was just computed from the bytes written: nothing to verify later.
        stamp_store_files(self.path, [r for split in splits for r in manifest["files"][split]])
        return self.path

    def abort(self) -> None:
        """Remove the ``.partial`` folder."""
        shutil.rmtree(self.partial, ignore_errors=True)
