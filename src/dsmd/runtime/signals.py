"""Stopping on a signal: Ctrl-C (SIGINT) and SIGTERM end any command within seconds, with one line.

SIGINT raises :class:`KeyboardInterrupt`, as Python does by default. The command line makes
SIGTERM raise :class:`Terminated` the same way (:func:`sigterm_raises`), so every command unwinds
as it does for Ctrl-C: a file being written is dropped (:func:`~dsmd.runtime.files.atomic_path`),
the process group is left, child processes are stopped. What each command keeps:

- ``dsmd train`` defers SIGTERM (:func:`deferred_sigterm`): the optimiser step in progress
  completes, a checkpoint of that step is written, and the run stops with exit status
  :data:`TERMINATED` (143 = 128 + SIGTERM, the status a shell reports for a process ended by
  SIGTERM, so job schedulers read it as such) and a line naming ``--resume``; Ctrl-C stops at
  once, keeping the last checkpoint, with :data:`INTERRUPTED` (130 = 128 + SIGINT).
- ``dsmd extract`` and ``dsmd index`` stop at once: what is on disk is always a whole number of
  finished chunks (each written atomically), and the same command continues from there. Finishing
  the chunk in progress first (up to 8,192 images through a large teacher) could outlast the grace
  a scheduler gives before SIGKILL, and would keep nothing more than a resume recomputes.
- ``dsmd sweep`` passes the signal on to its runs and waits for them (see :mod:`dsmd.sweeps.runner`).
- Readers (``eval``, ``search``) write nothing and just stop; ``serve`` installs its own handlers while it
  serves: it lets the requests in progress finish and exits 0 (:mod:`dsmd.search.server`).

The handlers act only in the process that installed them: a DataLoader worker forked from it
inherits them and ignores SIGTERM, leaving its parent to stop it (torch already makes workers
ignore Ctrl-C), so a signal sent to a whole process group (a scheduler, ``torchrun``) does not
kill the workers under a step that is finishing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from dsmd.errors import DsmdError

INTERRUPTED = 128 + signal.SIGINT  # 130
TERMINATED = 128 + signal.SIGTERM  # 143


class Terminated(BaseException):  # noqa: N818 - named like KeyboardInterrupt, its SIGINT counterpart
    """SIGTERM, raised in the main thread like :class:`KeyboardInterrupt` for SIGINT.

    A :class:`BaseException`, so that no ``except Exception`` on the way swallows it.
    """


class Stopped(DsmdError):
    """A command stopped by a signal, with what is kept and how to continue.

    Printed as one line (``dsmd: MESSAGE``); the exit status is 128 + the signal's number.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def signal_of(exc: BaseException) -> int:
    """The signal a :class:`KeyboardInterrupt` or :class:`Terminated` stands for."""
    return signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT


def stopped_word(signum: int) -> str:
    """``interrupted`` (Ctrl-C) or ``terminated`` (SIGTERM), to start a stop's message."""
    return "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside, SIGTERM raises :class:`Terminated` in this process (the previous handler is put back after)."""
    if not _in_main_thread():
        yield
        return
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() == owner:  # a forked worker ignores it: its parent stops it
            raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@dataclass
class StopRequest:
    """Whether SIGTERM arrived while :func:`deferred_sigterm` was in force."""

    requested: bool = False


@contextlib.contextmanager
def deferred_sigterm(request: StopRequest) -> Iterator[StopRequest]:
    """Inside, SIGTERM only sets ``request.requested``; the caller stops at its next consistent point.

    When SIGTERM arrived, the process is stopping: the handler stays after the block, so that a
    second SIGTERM (a scheduler's repeat, ``torchrun`` forwarding late) cannot break an orderly
    exit. Otherwise the previous handler is put back.
    """
    if not _in_main_thread():
        yield request
        return

    def handler(signum, frame):
        request.requested = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield request
    finally:
        if not request.requested:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


__all__ = [
    "INTERRUPTED",
    "TERMINATED",
    "StopRequest",
    "Stopped",
    "Terminated",
    "deferred_sigterm",
    "signal_of",
    "sigterm_raises",
    "stopped_word",
]
