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
:meth:`FeatureStore.verify` also checks the sha256 sums.

Images are stored once per image, captions once per caption; ``caption_image[j]`` is the row
of caption ``j``'s image. A store is written into ``NAME.partial/`` and renamed into place
when complete, so an interrupted extraction never leaves a store that looks finished.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from dsmd.errors import DsmdError
from dsmd.store.safetensors_mmap import (
    NUMPY_DTYPES,
    Block,
    StoredRows,
    as_index,
    data_end,
    file_sha256,
    read_header,
)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"

_IMAGE_KEYS = ("image", "image_views")
_TEXT_KEYS = ("text", "caption_image")

class SplitFeatures:
    """Teacher features of one split, in memory or memory-mapped from a store.

    Attributes (each read in full, as float32, on first access when memory-mapped):
        image: ``(N_i, D)`` float32.
        text: ``(N_t, D)`` float32.
        caption_image: ``(N_t,)`` int64, row in ``image`` of each caption's image.
        image_views: ``(N_i, V, D)`` float32 features of ``V`` fixed augmented views of each
            image (:func:`dsmd.data.transforms.view_of`), or None.

    Training reads rows with :meth:`image_rows` and :meth:`text_rows`, which touch only the
    rows asked for; :attr:`num_images`, :attr:`num_captions`, :attr:`dim` and
    :attr:`num_views` read nothing.

    Args:
        image, text, image_views: tensors, or :class:`StoredRows` (lazy).
        caption_image: ``(N_t,)`` integer tensor, or :class:`StoredRows` (int64, lazy).
    """

    def __init__(self, image: torch.Tensor | StoredRows, text: torch.Tensor | StoredRows,
                 caption_image: torch.Tensor | StoredRows,
                 image_views: torch.Tensor | StoredRows | None = None):
        self._image = image
        self._text = text
        self._caption_image = caption_image
        self._image_views = image_views

    def __repr__(self) -> str:
        lazy = isinstance(self._image, StoredRows)
        return (f"SplitFeatures(num_images={self.num_images}, num_captions={self.num_captions}, dim={self.dim}, "
                f"num_views={self.num_views}, {'memory-mapped' if lazy else 'in memory'})")

    @staticmethod
    def _full(value: torch.Tensor | StoredRows | None) -> torch.Tensor | None:
        return value.read_all() if isinstance(value, StoredRows) else value

    @property
    def image(self) -> torch.Tensor:
        self._image = self._full(self._image)
        return self._image

    @image.setter
    def image(self, value: torch.Tensor) -> None:
        self._image = value

    @property
    def text(self) -> torch.Tensor:
        self._text = self._full(self._text)
        return self._text

    @text.setter
    def text(self, value: torch.Tensor) -> None:
        self._text = value

    @property
    def caption_image(self) -> torch.Tensor:
        self._caption_image = self._full(self._caption_image)
        return self._caption_image

    @caption_image.setter
    def caption_image(self, value: torch.Tensor) -> None:
        self._caption_image = value

    @property
    def image_views(self) -> torch.Tensor | None:
        self._image_views = self._full(self._image_views)
        return self._image_views

    @image_views.setter
    def image_views(self, value: torch.Tensor | None) -> None:
        self._image_views = value

    @property
    def num_images(self) -> int:
        """``N_i``."""
        return int(self._image.shape[0])

    @property
    def num_captions(self) -> int:
        """``N_t``."""
        return int(self._text.shape[0])

    @property
    def dim(self) -> int:
        """``D``."""
        return int(self._text.shape[-1] if len(self._text.shape) == 2 else self._image.shape[-1])

    @property
    def num_views(self) -> int:
        """``V``, the stored augmented views per image (0 without)."""
        return 0 if self._image_views is None else int(self._image_views.shape[1])

    @property
    def memory_mapped(self) -> bool:
        """True while ``image`` is still read lazily from the store's files."""
        return isinstance(self._image, StoredRows)

    def image_rows(self, image_index: torch.Tensor, view_index: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher image features of a batch, ``(B, D)`` float32 on the CPU.

        Args:
            image_index: ``(B,)`` int64 image rows.
            view_index: ``(B,)`` int64; 0 is the plain image (``image[i]``), ``v >= 1`` the
                stored view ``v - 1`` (``image_views[i, v - 1]``). None: all 0.

        Raises:
            IndexError: an image row is out of range, or a view above :attr:`num_views`.
        """
        idx = as_index(image_index)
        views = np.zeros_like(idx) if view_index is None else as_index(view_index)
        if views.shape != idx.shape:
            raise ValueError(f"image_index {tuple(idx.shape)} and view_index {tuple(views.shape)} differ in shape")
        if len(views) and (views.min() < 0 or views.max() > self.num_views):
            raise IndexError(f"view index out of range [0, {self.num_views}] (0 is the plain image; the store "
                             f"holds {self.num_views} views)")
        plain = views == 0
        if plain.all():
            return self._take(self._image, idx)
        out = torch.empty(len(idx), self.dim, dtype=torch.float32)
        if plain.any():
            out[torch.from_numpy(plain)] = self._take(self._image, idx[plain])
        other = ~plain
        out[torch.from_numpy(other)] = self._take(self._image_views, idx[other], views[other] - 1)
        return out

    def text_rows(self, caption_index: torch.Tensor) -> torch.Tensor:
        """Teacher text features of captions ``caption_index`` ((B,) int64): ``(B, D)`` float32 on the CPU."""
        return self._take(self._text, as_index(caption_index))

    @staticmethod
    def _take(source: torch.Tensor | StoredRows, index: np.ndarray, second: np.ndarray | None = None) -> torch.Tensor:
        if isinstance(source, StoredRows):
            return torch.from_numpy(source.take(index, second))
        i = torch.from_numpy(index)
        rows = source[i] if second is None else source[i, torch.from_numpy(second)]
        return rows.to(torch.float32)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON via a temporary file and ``os.replace`` (never half-written)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def shard_names(split: str, count: int) -> list[str]:
    """File names of a split written as ``count`` shards: ``SPLIT-00000-of-0000N.safetensors`` ..."""
    return [f"{split}-{k:05d}-of-{count:05d}.safetensors" for k in range(count)]


def write_split(folder: str | Path, split: str, features: SplitFeatures, dtype: str = "float32",
                shard_rows: int | None = None) -> list[dict]:
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
        raise DsmdError(f"feature store dtype must be float32 or float16, got {dtype!r}")
    if shard_rows is not None and shard_rows < 0:
        raise DsmdError(f"store_shard_rows must be a positive number of rows (or null), got {shard_rows}")
    tdtype = torch.float16 if dtype == "float16" else torch.float32
    folder = Path(folder)
    n_i, n_t = features.num_images, features.num_captions
    views = features.image_views
    if shard_rows:
        count = max(1, math.ceil(max(n_i, n_t) / shard_rows))
        names = shard_names(split, count)
        ranges = [((min(k * shard_rows, n_i), min((k + 1) * shard_rows, n_i)),
                   (min(k * shard_rows, n_t), min((k + 1) * shard_rows, n_t))) for k in range(count)]
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
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
        records.append({"file": name, "images": [a, b], "captions": [c, d], "bytes": path.stat().st_size,
                        "sha256": file_sha256(path)})
    return records


def describe_mismatch(found: dict, expected: dict, keys: tuple[str, ...]) -> list[str]:
    """Human-readable differences between two manifests on ``keys``."""
    out = []
    for key in keys:
        if key in expected and found.get(key) != expected[key]:
            out.append(f"{key}: store has {found.get(key)!r}, expected {expected[key]!r}")
    return out


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
            hint = " An extraction was interrupted: run `dsmd extract` again to finish it." if Path(
                str(path) + ".partial").exists() else ""
            raise DsmdError(f"no feature store at {path}.{hint} Build it with `dsmd extract --config CONFIG store={path}` "
                            "(or, for features computed elsewhere, `dsmd import-features`).")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise DsmdError(f"{manifest_path} is corrupt ({exc}). Delete {path} and run `dsmd extract` again.") from exc
        if manifest.get("format_version") != FORMAT_VERSION:
            raise DsmdError(f"{path} has store format {manifest.get('format_version')}, this dsmd reads {FORMAT_VERSION}. Extract again.")
        store = cls(path, manifest)
        for split in manifest["splits"]:
            store._check_files(split)
        return store

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def teacher(self) -> dict:
        return self.manifest["teacher"]

    def _fix(self) -> str:
        if self.teacher.get("kind") == "imported":
            return (f"Re-import the features: `dsmd import-features --overwrite --config CONFIG store={self.path}` "
                    f"(or delete {self.path} and import again).")
        return f"Re-extract it: `dsmd extract --overwrite --config CONFIG store={self.path}` (or delete {self.path} and extract again)."

    def files(self, split: str) -> list[dict]:
        """The split's file records (see the module docstring); a legacy store's single file has
        only ``file``, ``images`` and ``captions``."""
        records = self.manifest.get("files", {}).get(split)
        if records is not None:
            return records
        info = self.manifest["splits"][split]
        return [{"file": f"{split}.safetensors", "images": [0, info["num_images"]],
                 "captions": [0, info["num_captions"]]}]

    def _check_files(self, split: str) -> None:
        for record in self.files(split):
            file = self.path / record["file"]
            what = f"feature store {self.path}: {record['file']} (split '{split}', images {record['images'][0]}.." \
                   f"{record['images'][1]}, captions {record['captions'][0]}..{record['captions'][1]})"
            if not file.is_file():
                raise DsmdError(f"{what} is missing. {self._fix()}")
            size = file.stat().st_size
            if "bytes" in record:
                if size != record["bytes"]:
                    state = "truncated" if size < record["bytes"] else "larger than recorded"
                    raise DsmdError(f"{what} is {state}: {size} bytes, the manifest says {record['bytes']}. {self._fix()}")
                continue
            try:
                header, start = read_header(file)
                end = data_end(header, start)
            except (ValueError, OSError) as exc:
                raise DsmdError(f"cannot read {what} ({exc}). {self._fix()}") from exc
            if size < end:
                raise DsmdError(f"{what} is truncated: {size} bytes, its header needs {end}. {self._fix()}")

    def verify(self) -> None:
        """Check every file's sha256 against the manifest (reads the whole store).

        Raises:
            DsmdError: a file differs from what was written.
        """
        for split in self.manifest["splits"]:
            self._check_files(split)
            for record in self.files(split):
                if "sha256" in record and file_sha256(self.path / record["file"]) != record["sha256"]:
                    raise DsmdError(f"feature store {self.path}: {record['file']} is corrupt (sha256 differs from the "
                                    f"manifest). {self._fix()}")

    def split(self, name: str) -> SplitFeatures:
        """One split, memory-mapped (cached): nothing but the file headers is read now; rows
        are read when asked for (see :class:`SplitFeatures`)."""
        if name not in self._cache:
            if name not in self.manifest["splits"]:
                raise DsmdError(f"feature store {self.path} has no split '{name}' (it has {', '.join(self.manifest['splits'])}).")
            self._cache[name] = self._open_split(name)
        return self._cache[name]

    def _open_split(self, name: str) -> SplitFeatures:
        info = self.manifest["splits"][name]
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
            for key, first in (("image", record["images"][0]), ("image_views", record["images"][0]),
                               ("text", record["captions"][0]), ("caption_image", record["captions"][0])):
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
        if (rows["image"], rows["text"], rows["caption_image"]) != (n_i, n_t, n_t) or \
                row_shapes.get("image", (dim,)) != (dim,) or row_shapes.get("text", (dim,)) != (dim,) or \
                row_shapes.get("caption_image", ()) != () or \
                ("image_views" in row_shapes and rows["image_views"] != n_i):
            raise DsmdError(f"the files of split '{name}' in {self.path} do not match its manifest. {self._fix()}")
        views = (StoredRows(blocks["image_views"], n_i, row_shapes["image_views"])
                 if "image_views" in row_shapes else None)
        return SplitFeatures(StoredRows(blocks["image"], n_i, (dim,)), StoredRows(blocks["text"], n_t, (dim,)),
                             StoredRows(blocks["caption_image"], n_t, (), dtype=np.int64), views)

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

    def check_teacher(self, kind: str, name: str | None) -> None:
        """Refuse a store built by another teacher than the config names."""
        t = self.teacher
        if t.get("kind") != kind or (name is not None and t.get("source") != name):
            build = "dsmd import-features" if kind == "imported" else "dsmd extract"
            raise DsmdError(
                f"feature store {self.path} was built by teacher {t.get('kind')}:{t.get('source') or t.get('name')}, "
                f"but the config names {kind}:{name}. Use the matching store, or run `{build}` into a new folder."
            )
