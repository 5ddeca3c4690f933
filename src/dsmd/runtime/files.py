"""Files that are never half-written, and the one-line message of a failed write.

Every file dsmd writes for a user (checkpoints, logs replaced on resume, reports, store files,
manifests, indexes) goes through :func:`atomic_path`: the data is written to ``NAME.tmp``
beside the target, flushed to the disk, and renamed over ``NAME``; if anything fails (a full
disk, a read-only folder, an interruption) the temporary file is removed and the target is
left as it was. A process killed outright (SIGKILL, power loss) can still leave ``NAME.tmp``;
:func:`remove_temporaries` clears those when a run starts again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dsmd.errors import DsmdError

TMP_SUFFIX = ".tmp"


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; renamed over ``path`` on success.

    Args:
        path: the file to (re)write. Its folder must exist.
        durable: flush the file (and then the folder entry) to the disk, so a power loss
            leaves the old or the new file, never an empty one.

    Yields:
        ``path`` + ``.tmp``. On any exception it is removed and the exception propagates.
    """
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        _fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``*.tmp`` files a killed writer left directly in ``folder``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(folder.glob(f"*{TMP_SUFFIX}"))
    for p in stale:
        with contextlib.suppress(OSError):
            p.unlink() if p.is_file() or p.is_symlink() else shutil.rmtree(p)
    return stale


def os_error(exc: OSError) -> DsmdError:
    """The one-line message of a failed read or write (a full disk, a read-only folder, ...)."""
    where = exc.filename or "a file"
    if exc.errno == errno.ENOSPC:
        return DsmdError(
            f"no space left on the device writing {where}. Free space (or write elsewhere), then run "
            "the command again; an interrupted training run continues with --resume."
        )
    if exc.errno == errno.EROFS:
        return DsmdError(
            f"{where} is on a read-only file system. Choose a folder you can write (out_dir=, store=, --out)."
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return DsmdError(f"permission denied: {where}. Choose a folder you can write, or change its permissions.")
    return DsmdError(f"{exc.strerror or exc}: {where}.")


def check_writable(path: str | Path, key: str) -> None:
    """Refuse, without creating anything, a ``path`` that cannot become a writable folder.

    Raises:
        DsmdError: ``path`` or its nearest existing parent is a file, or that parent cannot be
            written (permissions, a read-only file system).
    """
    path = Path(path).absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        raise DsmdError(f"{key}={path}: {existing} is a file, not a folder. Choose another {key}=.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DsmdError(
            f"cannot write {key}={path}: {existing} is not writable (permissions or a read-only file "
            f"system). Choose another {key}=, or change its permissions."
        )


def read_json(path: str | Path, fix: str, kind: type = dict) -> Any:
    """The JSON value of the file at ``path``, which must be a ``kind``.

    Raises:
        DsmdError: the file cannot be read, is not UTF-8 JSON, or holds another kind of value:
            one line naming it and ``fix``.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DsmdError(f"{path} is damaged ({' '.join(str(exc).split())[:120]}). {fix}") from exc
    if not isinstance(value, kind):
        raise DsmdError(f"{path} is damaged (it holds a {type(value).__name__}, not a {kind.__name__}). {fix}")
    return value


def read_json_lines(path: str | Path, fix: str) -> list[dict[str, Any]]:
    """The records of a JSON-lines log: one object a line; a last line torn by a crash is left out.

    Raises:
        DsmdError: a line before the last that is not a JSON object (the file was damaged), by line.
    """
    path = Path(path)
    lines = path.read_bytes().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:  # (UnicodeDecodeError too: a byte changed in a key is refused, not read as another key)
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif number < len(lines) and line.strip():
            raise DsmdError(f"{path}: line {number} is damaged (not a JSON object). {fix}")
    return records
