"""``dsmd train`` that kills itself (SIGKILL) right after writing ``best.pt``, before ``last.pt``:
the narrowest window of a checkpoint (used by test_kill_resume.py)."""

from __future__ import annotations

import os
import signal
import sys

import dsmd.training.run_files as run_files

_save = run_files.save_checkpoint


def _save_then_die_after_best(path, state):
    _save(path, state)
    if path.name == "best.pt":
        os.kill(os.getpid(), signal.SIGKILL)


run_files.save_checkpoint = _save_then_die_after_best

from dsmd.cli import main  # noqa: E402

main(sys.argv[1:])
