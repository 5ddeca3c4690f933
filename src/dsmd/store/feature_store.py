"""The feature store: the teacher's features, computed once and read by index.

Layout of a store folder::

    manifest.json            teacher identity, preprocessing, normalisation, dtype, width,
                             dataset fingerprint and counts per split (a store of imported
                             features, :mod:`dsmd.store.importer`, has teacher kind
                             ``imported`` and may lack the test split), and under ``files``
                             each split's files with their row ranges, sizes and sha256
    train.safetensors        image (N_i, D), text (N_t, D), caption_image (N_t,) int64,
                             image_views (N_i, V, D) when store_views = V > 0
    val.safetensors
    test.safetensors
    unpaired_image.safetensors   a pool of images without captions (docs/method.md "Unpaired
                                 data"): image (N, D), no captions
    unpaired_text.safetensors    a pool of captions without images: text (N, D),
                                 caption_image (N,) all -1 (no image)

The pool tables are read like splits (:meth:`FeatureStore.split` by table name, sharded the
same way) and listed under the manifest's ``unpaired``; a store without pools has neither.

With ``store_shard_rows = S`` each split is instead written as shards of at most ``S`` rows,
images and captions sharded independently::

    train-00000-of-00070.safetensors   image rows 0 .. S-1 (+ their image_views),
                                       text and caption_image rows 0 .. S-1
    train-00001-of-00070.safetensors   image rows S .. 2S-1, caption rows S .. 2S-1
    ...
    train-00014-of-00070.safetensors   no image rows (COCO: 113k images in 14 shards of 8192),
                                       caption rows 14S .. 15S-1
    ...

Shard ``k`` holds image rows ``[kS, min((k+1)S, N_i))`` and caption rows
``[kS, min((k+1)S, N_t))``; a shard whose image (or caption) range is empty has no
``image``/``image_views`` (or ``text``/``caption_image``) tensor. ``caption_image`` keeps
global image rows. The manifest lists every file of a split::

    "files": {"train": [{"file": "train-00000-of-00070.safetensors", "images": [0, 8192],
                         "captions": [0, 8192], "bytes": 50397424, "sha256": "..."}, ...]}

An unsharded split is the single entry ``SPLIT.safetensors`` (stores written before the
``files`` record existed have none; their file is checked against its own header).

Reading: the files are memory-mapped (a safetensors file is an 8-byte little-endian header
length, a JSON header, then the raw little-endian arrays), so opening a split reads nothing
but the headers, and :meth:`SplitFeatures.image_rows` / :meth:`SplitFeatures.text_rows` read
only the rows asked for, converting float16 to float32. ``.image``, ``.text``,
``.image_views`` and ``.caption_image`` read the whole tensor on first access (and keep it).
Each file is mapped once per process, on first use (a mapping holds a file descriptor: the
soft limit on open files is raised when a store has many shards); a pickled split (DataLoader
workers) carries file names and offsets, not rows. Every file's presence and size is checked
when the store is opened, so a missing or truncated shard is reported before training starts;
:meth:`FeatureStore.verify` checks the sha256 sums and that the values are finite, once per
file and location (:mod:`dsmd.store.integrity`). The manifest itself is checked field by field
and against its own checksum (:mod:`dsmd.store.manifest`).

Images are stored once per image, captions once per caption; ``caption_image[j]`` is the row
of caption ``j``'s image. A store is written into ``NAME.partial/`` and renamed into place
when complete (:mod:`dsmd.store.writer`), so an interrupted extraction never leaves a store
that looks finished.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dsmd.errors import DsmdError
from dsmd.store.integrity import verify_files
from dsmd.store.manifest import FORMAT_VERSION, MANIFEST, UNPAIRED_TABLES, read_manifest
from dsmd.store.safetensors_mmap import NUMPY_DTYPES, Block, StoredRows, data_end, read_header
from dsmd.store.split_features import SplitFeatures

_IMAGE_KEYS = ("image", "image_views")
_TEXT_KEYS = ("text", "caption_image")

__all__ = ["FORMAT_VERSION", "MANIFEST", "FeatureStore", "SplitFeatures"]


def _starts(blocks: list[Block]) -> list[int]:
    """The first row each block must have for the blocks to cover their rows without gaps."""
    starts, row = [], 0
    for b in blocks:
        starts.append(row)
        row += b.shape[0]
    return starts


class FeatureStore:
    """A finished feature store folder (see the module docstring)."""

    def __init__(self, path: str | Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self._cache: dict[str, SplitFeatures] = {}

    @classmethod
    def open(cls, path: str | Path) -> FeatureStore:
        """Open a store; a missing or unfinished one is refused with the command that builds it.

        Every split's files are checked for presence and size (nothing is read but the
        headers of stores without a ``files`` record).

        Raises:
            DsmdError: no store, an unfinished or corrupt one, or a missing or truncated file.
        """
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            hint = (
                " An extraction was interrupted: run `dsmd extract` again to finish it."
                if Path(str(path) + ".partial").exists()
                else ""
            )
            raise DsmdError(
                f"no feature store at {path}.{hint} Build it with `dsmd extract --config CONFIG store={path}` "
                "(or, for features computed elsewhere, `dsmd import-features`)."
            )
        manifest = read_manifest(manifest_path, f"Delete {path} and build it again with `dsmd extract`.")
        store = cls(path, manifest)
        for split in store.tables():
            store._check_files(split)
        return store

    def tables(self) -> list[str]:
        """The splits, then the pool tables the store holds (``unpaired_image``, ``unpaired_text``)."""
        return [*self.manifest["splits"], *self.manifest.get("unpaired", {})]

    def _info(self, name: str) -> dict:
        return self.manifest["splits"].get(name) or self.manifest.get("unpaired", {})[name]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def teacher(self) -> dict:
        return self.manifest["teacher"]

    def _fix(self) -> str:
        if self.teacher.get("kind") == "imported":
            return (
                f"Re-import the features: `dsmd import-features --overwrite --config CONFIG store={self.path}` "
                f"(or delete {self.path} and import again)."
            )
        return f"Re-extract it: `dsmd extract --overwrite --config CONFIG store={self.path}` (or delete {self.path} and extract again)."

    def files(self, split: str) -> list[dict]:
        """The split's file records (see the module docstring); a legacy store's single file has
        only ``file``, ``images`` and ``captions``."""
        records = self.manifest.get("files", {}).get(split)
        if records is not None:
            return records
        info = self._info(split)
        return [
            {"file": f"{split}.safetensors", "images": [0, info["num_images"]], "captions": [0, info["num_captions"]]}
        ]

    def _check_files(self, split: str) -> None:
        for record in self.files(split):
            file = self.path / record["file"]
            what = (
                f"feature store {self.path}: {record['file']} (split '{split}', images {record['images'][0]}.."
                f"{record['images'][1]}, captions {record['captions'][0]}..{record['captions'][1]})"
            )
            if not file.is_file():
                raise DsmdError(f"{what} is missing. {self._fix()}")
            size = file.stat().st_size
            if "bytes" in record:
                if size != record["bytes"]:
                    state = "truncated" if size < record["bytes"] else "larger than recorded"
                    raise DsmdError(
                        f"{what} is {state}: {size} bytes, the manifest says {record['bytes']}. {self._fix()}"
                    )
                continue
            try:
                header, start = read_header(file)
                end = data_end(header, start)
            except (ValueError, OSError) as exc:
                raise DsmdError(f"cannot read {what} ({exc}). {self._fix()}") from exc
            if size < end:
                raise DsmdError(f"{what} is truncated: {size} bytes, its header needs {end}. {self._fix()}")

    def verify(
        self, splits: list[str] | None = None, force: bool = False, allow_hashing: bool = True, progress: bool = False
    ) -> int:
        """Check the files of ``splits`` (default: all, pool tables too) against their sha256 and for finite values.

        Files verified before at this location are skipped unless ``force`` (see
        :mod:`dsmd.store.integrity` for what that costs and guarantees).

        Returns:
            Bytes hashed (0 when every file was verified before).

        Raises:
            DsmdError: a corrupt file, values that are not finite, or (``allow_hashing=False``)
                a file not verified on this machine yet.
        """
        splits = self.tables() if splits is None else splits
        records = [r for split in splits for r in self.files(split)]
        for split in splits:
            self._check_files(split)
        todo = sum(r.get("bytes", 0) for r in records)
        with tqdm(
            total=todo, unit="B", unit_scale=True, desc=f"verifying {self.path.name}", leave=False, disable=not progress
        ) as bar:
            return verify_files(
                self.path, records, self._fix(), force=force, allow_hashing=allow_hashing, progress=bar.update
            )

    def split(self, name: str) -> SplitFeatures:
        """One split or pool table, memory-mapped (cached): nothing but the file headers is read
        now; rows are read when asked for (see :class:`SplitFeatures`)."""
        if name not in self._cache:
            if name not in self.tables():
                raise DsmdError(f"feature store {self.path} has no split '{name}' (it has {', '.join(self.tables())}).")
            self._cache[name] = self._open_split(name)
        return self._cache[name]

    def _open_split(self, name: str) -> SplitFeatures:
        info = self._info(name)
        n_i, n_t, dim = info["num_images"], info["num_captions"], self.dim
        blocks: dict[str, list[tuple[int, np.ndarray]]] = {k: [] for k in (*_IMAGE_KEYS, *_TEXT_KEYS)}
        row_shapes: dict[str, tuple[int, ...]] = {}
        for record in self.files(name):
            file = self.path / record["file"]
            try:
                header, start = read_header(file)
                size = file.stat().st_size
            except (ValueError, OSError) as exc:
                raise DsmdError(f"cannot read {file} ({exc}). {self._fix()}") from exc
            for key, first in (
                ("image", record["images"][0]),
                ("image_views", record["images"][0]),
                ("text", record["captions"][0]),
                ("caption_image", record["captions"][0]),
            ):
                if key not in header:
                    continue
                t = header[key]
                shape, (a, b) = tuple(t["shape"]), t["data_offsets"]
                dtype = NUMPY_DTYPES.get(t["dtype"])
                if dtype is None or not shape or b - a != dtype.itemsize * math.prod(shape) or start + b > size:
                    raise DsmdError(f"{file}: tensor '{key}' is unreadable ({t['dtype']} {list(shape)}). {self._fix()}")
                blocks[key].append(Block(first, str(file), start + a, dtype.str, shape))
                row_shapes[key] = shape[1:]
        rows = {key: sum(b.shape[0] for b in blocks[key]) for key in blocks}
        if (
            (rows["image"], rows["text"], rows["caption_image"]) != (n_i, n_t, n_t)
            or row_shapes.get("image", (dim,)) != (dim,)
            or row_shapes.get("text", (dim,)) != (dim,)
            or row_shapes.get("caption_image", ()) != ()
            or ("image_views" in row_shapes and rows["image_views"] != n_i)
        ):
            raise DsmdError(f"the files of split '{name}' in {self.path} do not match its manifest. {self._fix()}")
        if any(b.first != first for b, first in zip(blocks["image"], _starts(blocks["image"]), strict=True)) or any(
            b.first != first for b, first in zip(blocks["text"], _starts(blocks["text"]), strict=True)
        ):
            raise DsmdError(
                f"the files of split '{name}' in {self.path} leave gaps between their row ranges. {self._fix()}"
            )
        views = (
            StoredRows(blocks["image_views"], n_i, row_shapes["image_views"]) if "image_views" in row_shapes else None
        )
        return SplitFeatures(
            StoredRows(blocks["image"], n_i, (dim,)),
            StoredRows(blocks["text"], n_t, (dim,)),
            StoredRows(blocks["caption_image"], n_t, (), dtype=np.int64),
            views,
        )

    def check_dataset(self, split: str, fingerprint: str) -> None:
        """Refuse a store built from other data than the split at hand."""
        info = self.manifest["splits"].get(split)
        if info is None:
            raise DsmdError(f"feature store {self.path} has no split '{split}'. Run `dsmd extract` for this dataset.")
        if info["fingerprint"] != fingerprint:
            raise DsmdError(
                f"feature store {self.path} was built for another dataset: the '{split}' split's "
                f"fingerprint differs (store {info['fingerprint'][:12]}, data {fingerprint[:12]}). "
                "Point `store=` at the store of this dataset, or run `dsmd extract` into a new folder."
            )

    def check_pool(self, modality: str, fingerprint: str) -> None:
        """Refuse a store that lacks the pool of ``modality`` (``image`` or ``text``) at hand, or
        holds another one."""
        table = UNPAIRED_TABLES[modality]
        info = self.manifest.get("unpaired", {}).get(table)
        key = "data.unpaired_images" if modality == "image" else "data.unpaired_texts"
        if info is None:
            raise DsmdError(
                f"feature store {self.path} holds no pool of unpaired {modality}s ({key}). Run `dsmd extract` with "
                "this config: it adds the pool's table to the store."
            )
        if info["fingerprint"] != fingerprint:
            raise DsmdError(
                f"feature store {self.path} was built for another pool of unpaired {modality}s ({key}): its "
                f"fingerprint differs (store {info['fingerprint'][:12]}, pool {fingerprint[:12]}). Point `store=` at "
                "the store of this pool, or run `dsmd extract --overwrite` to rebuild it."
            )

    def check_teacher(self, kind: str, name: str | None) -> None:
        """Refuse a store built by another teacher than the config names."""
        t = self.teacher
        if t.get("kind") != kind or (name is not None and t.get("source") != name):
            build = "dsmd import-features" if kind == "imported" else "dsmd extract"
            raise DsmdError(
                f"feature store {self.path} was built by teacher {t.get('kind')}:{t.get('source') or t.get('name')}, "
                f"but the config names {kind}:{name}. Use the matching store, or run `{build}` into a new folder."
            )
