"""Memory-mapped rows of safetensors files (the feature store's reading side).

A safetensors file is an 8-byte little-endian header length, a JSON header, then the raw
little-endian arrays; :class:`StoredRows` maps the files of one stored tensor (one file, or the
shards of a sharded store) and reads only the rows asked for, converting float16 to float32.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# safetensors dtype names -> numpy little-endian dtypes (the ones a store holds)
NUMPY_DTYPES = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
    "I32": np.dtype("<i4"),
}


def file_sha256(path: str | Path, block: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def read_header(path: str | Path) -> tuple[dict, int]:
    """A safetensors file's header (tensor name -> dtype, shape, data_offsets) and data start.

    Raises:
        ValueError: the file is too short or its header is not valid JSON.
    """
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise ValueError(f"implausible header length {n}")
        raw = f.read(n)
        if len(raw) != n:
            raise ValueError("header cut short")
    header = json.loads(raw)
    header.pop("__metadata__", None)
    return header, 8 + n


def data_end(header: dict, start: int) -> int:
    return start + max((int(t["data_offsets"][1]) for t in header.values()), default=0)


# Shared read-only mappings of store files, one per file (each holds a file descriptor); an
# entry lives as long as some StoredRows uses it.
_MAPPED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _map_file(path: str) -> np.memmap:
    st = os.stat(path)
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    raw = _MAPPED.get(key)
    if raw is None:
        raw = np.memmap(path, dtype=np.uint8, mode="r")
        _MAPPED[key] = raw
    return raw


def _allow_open_files(count: int) -> None:
    """Raise the soft limit on open files (up to the hard one) when a store maps many files."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


@dataclass(frozen=True)
class Block:
    """Rows ``first .. first + shape[0] - 1`` of a stored tensor: ``shape`` elements of
    ``dtype`` (numpy, little-endian) at byte ``offset`` of ``file``."""

    first: int
    file: str
    offset: int
    dtype: str
    shape: tuple[int, ...]


class StoredRows:
    """Rows of one stored tensor, ``(N, *row_shape)``, memory-mapped from one or more files.

    Files are mapped on first use (one shared read-only mapping per file); a pickled
    StoredRows carries only the file names and offsets and maps them again where unpickled.

    Args:
        blocks: the tensor's :class:`Block` per file, in row order.
        num_rows: ``N``.
        row_shape: the shape of one row: ``(D,)``, ``(V, D)`` or ``()``.
        dtype: what rows are returned as (float32 features, int64 indices).
    """

    def __init__(self, blocks: list[Block], num_rows: int, row_shape: tuple[int, ...], dtype=np.float32):
        self.blocks = blocks
        self.starts = np.array([b.first for b in blocks], dtype=np.int64)
        self.shape = (num_rows, *row_shape)
        self.dtype = np.dtype(dtype)
        self._arrays: list[np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}

    def arrays(self) -> list[np.ndarray]:
        """The blocks' rows as read-only numpy views of the mapped files."""
        if self._arrays is None:
            _allow_open_files(len({b.file for b in self.blocks}))
            arrays = []
            for b in self.blocks:
                dtype = np.dtype(b.dtype)
                nbytes = dtype.itemsize * math.prod(b.shape)
                arrays.append(
                    np.empty(b.shape, dtype)
                    if nbytes == 0
                    else _map_file(b.file)[b.offset : b.offset + nbytes].view(dtype).reshape(b.shape)
                )
            self._arrays = arrays
        return self._arrays

    def take(self, index: np.ndarray, second: np.ndarray | None = None) -> np.ndarray:
        """Rows ``index`` ((B,) int64) as ``(B, *row_shape)``; with ``second`` ((B,)), element
        ``[index[b], second[b]]`` of each row: ``(B, *row_shape[1:])``."""
        out = np.empty((len(index), *self.shape[1 + (second is not None) :]), dtype=self.dtype)
        if len(index) == 0:
            return out
        if index.min() < 0 or index.max() >= self.shape[0]:
            raise IndexError(f"row index out of range [0, {self.shape[0]})")
        arrays = self.arrays()
        which = np.searchsorted(self.starts, index, side="right") - 1
        for b in np.unique(which):
            mask = which == b
            local = index[mask] - self.blocks[b].first
            out[mask] = arrays[b][local] if second is None else arrays[b][local, second[mask]]
        return out

    def read_all(self) -> torch.Tensor:
        """The whole tensor, ``(N, *row_shape)``."""
        out = np.empty(self.shape, dtype=self.dtype)
        for b, arr in zip(self.blocks, self.arrays(), strict=True):
            out[b.first : b.first + len(arr)] = arr
        return torch.from_numpy(out)


def as_index(index: torch.Tensor | np.ndarray | list[int]) -> np.ndarray:
    if isinstance(index, torch.Tensor):
        return index.detach().to("cpu", torch.long).numpy().reshape(-1)
    return np.asarray(index, dtype=np.int64).reshape(-1)
