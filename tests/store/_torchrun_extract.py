"""``dsmd`` under torchrun with test hooks (run as a script by test_distributed_extract.py).

Environment:
    DSMD_TEST_CHUNK_SIZE: rows per extraction chunk (instead of ``CHUNK_SIZE``).
    DSMD_TEST_SAVE_LOG: a file each rank appends ``RANK FOLDER FILE`` to for every chunk saved.
    DSMD_TEST_DIE_RANK, DSMD_TEST_DIE_AFTER: that rank kills itself (SIGKILL) after saving
        that many chunks.
"""

from __future__ import annotations

import os
import signal
import sys

import dsmd.extraction.extractor as ex
from dsmd.cli import main

if "DSMD_TEST_CHUNK_SIZE" in os.environ:
    ex.CHUNK_SIZE = int(os.environ["DSMD_TEST_CHUNK_SIZE"])

_save = ex._Chunks.save
_saved = 0


def _save_and_maybe_die(self, k, features):
    global _saved
    _save(self, k, features)
    _saved += 1
    rank = os.environ.get("RANK", "0")
    if "DSMD_TEST_SAVE_LOG" in os.environ:
        with open(os.environ["DSMD_TEST_SAVE_LOG"], "a") as f:
            f.write(f"{rank} {self.folder.name} {self._path(k).name}\n")
    if os.environ.get("DSMD_TEST_DIE_RANK") == rank and _saved >= int(os.environ.get("DSMD_TEST_DIE_AFTER", 1)):
        os.kill(os.getpid(), signal.SIGKILL)


ex._Chunks.save = _save_and_maybe_die
main(sys.argv[1:])
