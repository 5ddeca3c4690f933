"""Checking that a store's files are the bytes that were written, without slowing down opening.

What is checked, and when (see also docs/guarantees.md):

- **opening** (:meth:`~dsmd.store.feature_store.FeatureStore.open`): the manifest (fields,
  checksum) and every file's presence, size and header. Costs one ``stat`` and one header read
  per file, whatever the store's size.
- **before training or scoring** (:func:`verify_files`): every file read is hashed (sha256,
  against the manifest) and its feature values checked to be finite, in one sequential pass.
  A file that passed is *stamped*: its size, inode, mtime and ctime are recorded in
  ``STORE/.verified.json`` (or, when the store folder cannot be written, in the user's cache,
  ``$XDG_CACHE_HOME/dsmd/verified/``). A stamped file is not hashed again while those four
  stay the same: copying, moving to another file system, or writing into the file changes them.
  A store written by dsmd is stamped as it is written, so only stores that arrive from
  elsewhere pay for hashing, once per location (measured by ``benchmarks/bench_store.py``).
- ``dsmd verify STORE`` hashes everything again, stamps or not (bit rot on a disk that changes
  no metadata is found only this way).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from dsmd.errors import DsmdError
from dsmd.runtime.checksums import is_stamped, load_stamps, stamp_verified
from dsmd.store.safetensors_mmap import NUMPY_DTYPES, read_header

_BLOCK = 1 << 22


def _records(records: Iterable[dict]) -> dict[str, str]:
    """Manifest file records as ``{file: sha256}`` (records without a sha256 left out)."""
    return {r["file"]: r["sha256"] for r in records if "sha256" in r}


def stamp_store_files(store: str | Path, records: Iterable[dict]) -> None:
    """Record that the files of ``records`` (manifest file records) hold their sha256 now."""
    stamp_verified(store, _records(records))


def _finite(chunk: bytes, dtype: np.dtype) -> bool:
    """Whether every value of ``chunk`` is finite (float16 by its exponent bits: numpy's
    ``isfinite`` is several times slower than hashing on float16)."""
    if dtype.itemsize == 2:
        return int((np.frombuffer(chunk, dtype="<u2") & 0x7C00).max()) != 0x7C00
    return bool(np.isfinite(np.frombuffer(chunk, dtype=dtype)).all())


def hash_and_check(path: Path, progress: Callable[[int], None] | None = None) -> tuple[str, str | None]:
    """sha256 of a safetensors file, and the first non-finite feature value found (or None).

    Reads the file once, in order: the header, then each tensor in blocks; float tensors are
    checked for NaN and inf as they pass.
    """
    header, start = read_header(path)
    tensors = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    h = hashlib.sha256()
    bad = None
    with open(path, "rb") as f:
        h.update(f.read(start))
        for name, info in tensors:
            a, b = info["data_offsets"]
            dtype = NUMPY_DTYPES.get(info["dtype"])
            step = _BLOCK - _BLOCK % (dtype.itemsize if dtype is not None else 1)
            f.seek(start + a)
            for pos in range(a, b, step):
                chunk = f.read(min(step, b - pos))
                h.update(chunk)
                if progress:
                    progress(len(chunk))
                if bad is None and dtype is not None and dtype.kind == "f" and chunk and not _finite(chunk, dtype):
                    bad = f"tensor '{name}' holds NaN or inf"
        while rest := f.read(_BLOCK):
            h.update(rest)
    return h.hexdigest(), bad


def verify_files(
    store: str | Path,
    records: list[dict],
    fix: str,
    force: bool = False,
    allow_hashing: bool = True,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Check the files of ``records`` against their sha256 and for finite values; stamp them.

    Args:
        records: manifest file records (those without ``sha256``, from old stores, are skipped).
        fix: what to do about a corrupt file (appended to the message).
        force: hash stamped files too.
        allow_hashing: False refuses an unstamped file instead of hashing it (processes under
            torchrun, which must not spend minutes outside their collectives' timeouts).
        progress: called with the number of bytes hashed, as they are.

    Returns:
        The number of bytes hashed (0: every file was stamped).

    Raises:
        DsmdError: a file whose bytes differ from the manifest's sha256, with NaN or inf values,
            or (``allow_hashing=False``) a file not verified yet.
    """
    store = Path(store)
    stamps = {} if force else load_stamps(store)
    todo = [r for r in records if "sha256" in r and not is_stamped(store, r["file"], r["sha256"], stamps)]
    if todo and not allow_hashing:
        size = sum((store / r["file"]).stat().st_size for r in todo)
        raise DsmdError(
            f"feature store {store}: {len(todo)} files ({size / 1e9:.2f} GB) have not been verified on this "
            f"machine. Run `dsmd verify {store}` once (one process), then start again."
        )
    hashed = 0
    for r in todo:
        digest, bad = hash_and_check(store / r["file"], progress)
        hashed += (store / r["file"]).stat().st_size
        if digest != r["sha256"]:
            raise DsmdError(
                f"feature store {store}: {r['file']} is corrupt (its sha256 differs from the manifest: "
                f"the file changed after it was written). {fix}"
            )
        if bad is not None:
            raise DsmdError(
                f"feature store {store}: {r['file']}: {bad}; a teacher feature that is not finite "
                f"cannot be learned. {fix}"
            )
    if todo:
        stamp_store_files(store, todo)
    return hashed
