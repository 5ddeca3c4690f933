"""``dsmd train`` that kills itself (SIGKILL, or SIGTERM) at a chosen point of the run (used by test_kill_resume.py).

    DSMD_TEST_KILL=POINT python _killable_train.py train ...

The kill lands exactly there, whatever the machine's speed. ``POINT`` is one of:

- ``setup``: right after the run's files are opened (logs cut back to the checkpoint on a
  resume, ``config.yaml`` written), before the first step;
- ``step@N``: right after the record of optimiser step ``N`` is in ``steps.jsonl``;
- ``checkpoint-tmp@N``: while the checkpoint of step ``N`` is written: ``last.pt.tmp`` complete
  and flushed, not yet renamed over ``last.pt``;
- ``validation@N``: after the validation that follows step ``N``, before its line in
  ``epochs.jsonl``;
- ``epoch-line@N``: after that line, before the epoch's checkpoint;
- ``best@N``: after ``best.pt`` of step ``N`` is written, before ``last.pt`` (the narrowest window);
- ``result``: after the last checkpoint, before ``result.json``;
- ``term@N``: SIGTERM instead of SIGKILL, right after the record of step ``N`` is in
  ``steps.jsonl`` (the run then stops by itself, after writing a checkpoint of step ``N``).

Nothing of this exists in dsmd itself: it patches from outside.
"""

from __future__ import annotations

import os
import signal
import sys

import dsmd.runtime.files as files
import dsmd.training.run_files as run_files

POINT = os.environ["DSMD_TEST_KILL"]
WHERE, _, AT = POINT.partition("@")
AT_STEP = int(AT) if AT else None
KNOWN = {"setup", "step", "checkpoint-tmp", "validation", "epoch-line", "best", "result", "term"}
if WHERE not in KNOWN or (AT_STEP is None) != (WHERE in {"setup", "result"}):
    sys.exit(f"_killable_train.py: unknown kill point {POINT!r}")

last_step = [0]  # the last step logged, and the step of the checkpoint being written


def die(where: str) -> None:
    if where == WHERE and (AT_STEP is None or AT_STEP == last_step[0]):
        os.kill(os.getpid(), signal.SIGTERM if where == "term" else signal.SIGKILL)


def wrap(owner, name: str, before=None, after=None) -> None:
    real = getattr(owner, name)

    def patched(*args, **kwargs):
        if before:
            before(*args, **kwargs)
        out = real(*args, **kwargs)
        if after:
            after(*args, **kwargs)
        return out

    setattr(owner, name, patched)


def _logged(files_, record):
    last_step[0] = record["step"]
    files_.flush()
    die("step")
    die("term")


def _saving(path, state):
    last_step[0] = state["step"]


def _replacing(src, dst, *_, **__):
    if str(dst).endswith("last.pt"):
        die("checkpoint-tmp")


wrap(run_files.RunFiles, "begin", after=lambda *_: die("setup"))
wrap(run_files.RunFiles, "step", after=_logged)
wrap(run_files.RunFiles, "epoch", before=lambda *_: die("validation"), after=lambda *_: die("epoch-line"))
wrap(run_files.RunFiles, "result", before=lambda *_: die("result"))
wrap(run_files, "save_checkpoint", before=_saving, after=lambda path, _: path.name == "best.pt" and die("best"))
wrap(files.os, "replace", before=_replacing)

from dsmd.cli import main  # noqa: E402

main(sys.argv[1:])
