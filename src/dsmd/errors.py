"""User-facing errors.

A :class:`DsmdError` is an error the user can fix (a missing file, a bad config key, a feature
store built for another teacher). The CLI prints its message, without a traceback, and exits 2.
Messages name the problem and the fix.
"""

from __future__ import annotations


class DsmdError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""
