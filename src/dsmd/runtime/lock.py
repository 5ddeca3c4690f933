"""One writer per folder: an exclusive lock held while a command writes a run, a store or an index.

``dsmd train`` (its ``out_dir``), ``dsmd extract`` and ``dsmd import-features`` (the store, when
they write it), ``dsmd index`` and ``dsmd export`` (``--out``) hold the lock of their output folder
for as long as they write. A second such command on the folder is refused at once, before it creates or changes
anything, with one line naming the holder (pid, host, command line, since when) and exit status 2.
Readers (``eval``, ``search``, ``serve``, a training run reading its store) take no lock and are
never blocked.

Files: the lock of ``PARENT/NAME`` is ``PARENT/.NAME.lock``, beside the folder rather than in it,
because stores and indexes are built in ``NAME.partial/`` and renamed over ``NAME``. It is an
OS-level lock (``flock``, through the ``filelock`` library) that the kernel releases when its
holder ends in any way, SIGKILL and power loss included: a lock left by a process that died is
free, and the next command takes it over with nothing to clean up. ``PARENT/.NAME.lock.json``
describes the holder for the refusal's message::

    {"pid": 4242, "host": "node1", "command": "dsmd train --config my.yaml", "since": "2026-12-01T10:00:00+00:00"}

It is written atomically once the lock is held and removed before it is released; one left by
a killed holder is overwritten by the next. A description naming a process of this host that
is no longer alive is never shown as the holder. The lock file is removed while still held, just
before it is released (filelock checks, once it holds a lock, that its file was not removed
meanwhile), and so are the parent folders taking it created: a command that fails leaves nothing
behind. On a file system without ``flock``, filelock falls back to a marker file, which it takes
over when the process recorded in it is dead.

Under ``torchrun`` rank 0 takes the lock for the whole job and tells the other ranks
(:func:`exclusive_folder`, a broadcast): on a refusal every rank stops, and only rank 0 prints
the line. Extraction on several nodes writes one store on a file system they all see, so the
one lock of global rank 0 covers every node (a lock per node would refuse the second node).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shlex
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from dsmd.errors import DsmdError
from dsmd.runtime.files import os_error, write_json_atomic

if TYPE_CHECKING:  # (not imported at run time: taking a lock does not load torch)
    from dsmd.runtime.distributed import Distributed


class FolderInUse(DsmdError):
    """Another process holds the folder's lock.

    Attributes:
        folder: the folder asked for.
        holder: the holder's description (``pid``, ``host``, ``command``, ``since``); empty when
            it is not known (being written, or left by a process that died).
    """

    def __init__(self, message: str, folder: Path, holder: dict[str, Any]):
        super().__init__(message)
        self.folder = folder
        self.holder = holder


def lock_path(folder: str | Path, role: str = "") -> Path:
    """The lock file of ``folder``: ``.NAME.lock`` beside it (``.NAME.ROLE.lock`` for another role).

    Args:
        role: a second, independent lock of the same folder (a sweep claims a run with
            ``role="sweep"`` while the run's own ``dsmd train`` holds the plain one).
    """
    folder = Path(os.path.abspath(folder))
    return folder.parent / f".{folder.name}{'.' + role if role else ''}.lock"


def _info_path(lock: Path) -> Path:
    return lock.with_name(lock.name + ".json")


def _command() -> str:
    argv = list(sys.argv) or ["?"]
    if Path(argv[0]).name in ("dsmd", "__main__.py"):
        argv[0] = "dsmd"
    return shlex.join(argv)[:300]


def describe_self() -> dict[str, Any]:
    """This process as a lock's holder."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": _command(),
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _recorded_holder(lock: Path) -> dict[str, Any]:
    """The description beside a held lock; empty when missing, unreadable, or stale (a dead local pid)."""
    try:
        info = json.loads(_info_path(lock).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(info, dict):
        return {}
    pid = info.get("pid")
    if info.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        return {}  # left by a holder that died; the live holder has not written its own yet
    return info


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 4242 on host node1, `dsmd train ...`, since 2026-12-01T10:00:00+00:00`` (or that it is unknown)."""
    if not holder:
        return "a process that has not described itself yet"
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
        f"`{holder.get('command', '?')}`, since {holder.get('since', '?')}"
    )


def _is_native(lock: FileLock) -> bool:
    """Whether ``lock`` (held) is a kernel lock, not filelock's marker-file fallback (which records a pid)."""
    try:
        lock.pid  # noqa: B018 - raises AttributeError unless the lock is the fallback's marker
    except AttributeError:
        return True
    return False


def _remove_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) where they are still empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


class FolderLock:
    """A held lock of a folder (see the module docstring); :meth:`release` it, or use it in ``with``."""

    def __init__(self, folder: Path, path: Path, lock: FileLock, created: list[Path]):
        self.folder = folder
        self.path = path
        self._lock: FileLock | None = lock
        self._created = created

    def release(self) -> None:
        """Remove the description and the lock file, let the lock go, remove the folders taking
        it created if still empty (idempotent)."""
        if self._lock is None:
            return
        lock, self._lock = self._lock, None
        try:
            with contextlib.suppress(OSError):
                _info_path(self.path).unlink()
            if _is_native(lock):  # (the fallback's marker is removed by its own release)
                with contextlib.suppress(OSError):
                    self.path.unlink()
        finally:
            lock.release()
            _remove_folders(self._created)

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_folder(folder: str | Path, key: str, role: str = "") -> FolderLock:
    """Take the lock of ``folder`` at once, or refuse without waiting.

    Creates the lock's parent folder (``folder``'s parent) when missing; ``folder`` itself is
    left alone.

    Args:
        key: the option that named the folder (``out_dir``, ``store``, ``--out``), for the message.
        role: see :func:`lock_path`.

    Raises:
        FolderInUse: another process holds it.
        DsmdError: the lock file cannot be created (a read-only folder, permissions).
    """
    folder = Path(os.path.abspath(folder))
    path = lock_path(folder, role)
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # deepest first
    lock = FileLock(path, timeout=0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        holder = _recorded_holder(path)
        raise FolderInUse(
            f"{key}={folder} is in use by another dsmd command ({describe_holder(holder)}; lock {path}). "
            f"Wait until it ends (or stop it), or choose another {key}=.",
            folder,
            holder,
        ) from None
    except OSError as exc:
        _remove_folders(created)
        raise os_error(exc) from exc
    held = FolderLock(folder, path, lock, created)
    try:
        write_json_atomic(_info_path(path), describe_self())
    except BaseException:
        held.release()
        raise
    return held


def holder_of(folder: str | Path, role: str = "") -> dict[str, Any] | None:
    """Who holds the lock of ``folder`` now: their description (empty when unknown), None when free.

    A probe: the lock is taken and let go at once when free, so a writer starting at that very
    moment may be refused; use it for reports, not to decide who writes.
    """
    path = lock_path(folder, role)
    if not path.is_file():
        return None
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return _recorded_holder(path)
    except OSError:
        return None
    lock.release()
    return None


@contextlib.contextmanager
def exclusive_folder(
    folder: str | Path, key: str, ctx: Distributed | None = None, needed: bool = True
) -> Iterator[None]:
    """Hold the lock of ``folder`` inside the block: the pipelines' way to take it.

    Under ``torchrun`` (``ctx`` enabled) every rank must enter: rank 0 takes the lock and sends
    the outcome to the others, so they all go on or all stop (only rank 0 prints the refusal).

    Args:
        key: see :func:`acquire_folder`.
        ctx: this process's place in a ``torchrun`` job (None: alone).
        needed: whether the command will write (rank 0's value decides): a command that finds
            its output complete only reads it, and takes no lock.

    Raises:
        FolderInUse: another process holds it (on every rank).
        DsmdError: the lock file cannot be created, or a rank died while they agreed.
    """
    main = ctx is None or ctx.is_main
    held: FolderLock | None = None
    refusal: tuple[str, dict | None] | None = None  # (message, holder: None when not a FolderInUse)
    if main and needed:
        try:
            held = acquire_folder(folder, key)
        except FolderInUse as exc:
            refusal = (str(exc), exc.holder)
        except DsmdError as exc:
            refusal = (str(exc), None)
    try:
        if ctx is not None and ctx.enabled:
            refusal = ctx.broadcast_object(refusal, "sharing rank 0's lock of the output folder")
        if refusal is not None:
            message, holder = refusal
            error = DsmdError(message) if holder is None else FolderInUse(message, Path(folder), holder)
            error.report = main
            raise error
        yield
    finally:
        if held is not None:
            held.release()


__all__ = [
    "FolderInUse",
    "FolderLock",
    "acquire_folder",
    "describe_holder",
    "describe_self",
    "exclusive_folder",
    "holder_of",
    "lock_path",
]
