"""User-facing errors.

A :class:`DsmdError` is an error the user can fix (a missing file, a bad config key, a feature
store built for another teacher). The CLI prints its message, without a traceback, and exits 2.
Messages name the problem and the fix.
"""

from __future__ import annotations


class DsmdError(Exception):
    """An error caused by the user's input, with a message that says how to fix it.

    Attributes:
        exit_code: the command line's exit status (2; a command stopped by a signal uses
            128 + the signal's number, see :mod:`dsmd.runtime.signals`).
        report: whether this process prints the message. False on the ranks of a ``torchrun``
            job whose rank 0 prints the same line (a refused lock, a stop), so it is shown once.
    """

    exit_code: int = 2
    report: bool = True
