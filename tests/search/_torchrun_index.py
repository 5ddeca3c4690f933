"""``dsmd`` under torchrun with test hooks (run as a script by test_distributed_index.py).

Environment:
    DSMD_TEST_CHUNK: items per index chunk (instead of ``CHUNK``).
    DSMD_TEST_SAVE_LOG: a file each rank appends ``RANK CHUNK_FILE`` to for every chunk it saves.
    DSMD_TEST_DIE_RANK, DSMD_TEST_DIE_AFTER: that rank kills itself (SIGKILL) after saving
        that many chunks.
"""

from __future__ import annotations

import os
import signal
import sys

import dsmd.search.build as build
import dsmd.search.index as index
from dsmd.cli import main

if "DSMD_TEST_CHUNK" in os.environ:
    build.CHUNK = index.CHUNK = int(os.environ["DSMD_TEST_CHUNK"])

_save = build._save_chunk
_saved = 0


def _save_and_maybe_die(file, *args):
    global _saved
    _save(file, *args)
    _saved += 1
    rank = os.environ.get("RANK", "0")
    if "DSMD_TEST_SAVE_LOG" in os.environ:
        with open(os.environ["DSMD_TEST_SAVE_LOG"], "a") as f:
            f.write(f"{rank} {file.name}\n")
    if os.environ.get("DSMD_TEST_DIE_RANK") == rank and _saved >= int(os.environ.get("DSMD_TEST_DIE_AFTER", 1)):
        os.kill(os.getpid(), signal.SIGKILL)


build._save_chunk = _save_and_maybe_die
main(sys.argv[1:])
