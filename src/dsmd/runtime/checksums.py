"""Files that are checked against the sha256 recorded when they were written, hashed once per place.

A folder dsmd writes (a feature store, an index, an export) records each file's size and sha256
in its own metadata. Opening the folder checks every file's size; a file's bytes are hashed the
first time it is opened at a location and the result is *stamped*: its size, inode, mtime and
ctime are recorded in ``FOLDER/.verified.json`` (or, where the folder cannot or should not be
written, in the user's cache, ``$XDG_CACHE_HOME/dsmd/verified/``). A stamped file is not hashed
again while those four stay the same: copying, moving to another file system, or writing into
the file changes them. ``dsmd verify`` hashes everything again, stamps or not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dsmd.errors import DsmdError
from dsmd.runtime.files import write_json_atomic

STAMPS = ".verified.json"
_BLOCK = 1 << 22


def sha256_file(path: str | Path, progress: Callable[[int], None] | None = None) -> str:
    """The sha256 of the file at ``path``, read in blocks (``progress`` called with each block's bytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_BLOCK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def file_records(folder: str | Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"bytes", "sha256"}}`` of the files ``names`` of ``folder``, as metadata records them."""
    folder = Path(folder)
    return {name: {"bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)} for name in names}


def json_sha256(data: Any) -> str:
    """sha256 of ``data`` as canonical JSON (sorted keys, no spaces): the same for the same values."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sealed(data: dict[str, Any], key: str = "sha256") -> dict[str, Any]:
    """``data`` with ``key`` set to the :func:`json_sha256` of the rest: a JSON file that checks itself."""
    rest = {k: v for k, v in data.items() if k != key}
    return {**rest, key: json_sha256(rest)}


def seal_holds(data: dict[str, Any], key: str = "sha256") -> bool:
    """Whether ``data[key]`` is the :func:`json_sha256` of the rest of ``data`` (written by :func:`sealed`)."""
    return data.get(key) == json_sha256({k: v for k, v in data.items() if k != key})


def _identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def _user_stamps(folder: Path) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dsmd" / "verified"
    return base / (hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:32] + ".json")


def _read_stamps(path: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}


def load_stamps(folder: str | Path) -> dict[str, dict]:
    """Stamps of ``folder``'s files: name -> ``{"identity": [...], "sha256": ...}``."""
    folder = Path(folder)
    return {**_read_stamps(_user_stamps(folder)), **_read_stamps(folder / STAMPS)}


def stamp_verified(folder: str | Path, records: dict[str, str], in_folder: bool = True) -> None:
    """Record that the files named by ``records`` (name -> sha256) hold those bytes now.

    Args:
        in_folder: write the stamps into ``FOLDER/.verified.json`` when it can be written;
            False keeps the folder as it is (an export a user ships) and uses the user's cache.
    """
    folder = Path(folder)
    stamps = load_stamps(folder)
    for name, digest in records.items():
        stamps[name] = {"identity": _identity(folder / name), "sha256": digest}
    targets = (folder / STAMPS, _user_stamps(folder)) if in_folder else (_user_stamps(folder),)
    for target in targets:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(target, stamps)
            return
        except OSError:
            continue  # a read-only folder: the user's cache; neither: verified again next time


def is_stamped(folder: Path, name: str, digest: str | None, stamps: dict) -> bool:
    """Whether ``folder/name`` was verified to hold ``digest`` and has not changed since."""
    stamp = stamps.get(name)
    return (
        isinstance(stamp, dict) and stamp.get("sha256") == digest and stamp.get("identity") == _identity(folder / name)
    )


def check_files(
    folder: str | Path,
    records: dict[str, dict[str, Any]],
    what: str,
    fix: str,
    force: bool = False,
    in_folder: bool = True,
) -> int:
    """Check the files of ``folder`` against ``records`` (:func:`file_records`); stamp those that pass.

    Args:
        what: names the folder in messages (``"index runs/index"``).
        fix: what to do about a damaged file (appended to the message).
        force: hash stamped files too (``dsmd verify``).
        in_folder: where stamps go (:func:`stamp_verified`).

    Returns:
        The number of bytes hashed (0: every file was stamped).

    Raises:
        DsmdError: a file missing, of another size, or whose sha256 differs from its record.
    """
    folder = Path(folder)
    stamps = {} if force else load_stamps(folder)
    hashed, passed = 0, {}
    for name, record in records.items():
        path = folder / name
        if not path.is_file():
            raise DsmdError(f"{what}: {name} is missing. {fix}")
        size = path.stat().st_size
        if size != record.get("bytes"):
            raise DsmdError(f"{what}: {name} is damaged ({size} bytes where {record.get('bytes')} were written). {fix}")
        if is_stamped(folder, name, record.get("sha256"), stamps):
            continue
        if sha256_file(path) != record.get("sha256"):
            raise DsmdError(
                f"{what}: {name} is damaged (its sha256 differs from the one recorded when it was written). {fix}"
            )
        hashed += size
        passed[name] = record["sha256"]
    if passed:
        stamp_verified(folder, passed, in_folder)
    return hashed
