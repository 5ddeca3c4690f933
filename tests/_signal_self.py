"""``dsmd ...`` with test-only signal points, so a test stops a command at a named point whatever
the machine's speed (used by test_signals.py and test_one_writer.py).

    DSMD_TEST_SIGNAL=SIGINT@dsmd.extraction.chunks:_Chunks.save#1 python _signal_self.py extract ...

Environment (nothing of this exists in dsmd itself; it patches from outside):

- ``DSMD_TEST_SIGNAL=SIGNAL@MODULE:ATTR#N``: right after the ``N``-th call of ``MODULE.ATTR``
  (``ATTR`` may be ``Class.method``) returns, the process sends itself ``SIGNAL``.
- ``DSMD_TEST_SIGNAL_PARENT=SIGNAL@N``: after optimiser step ``N`` of a training run is logged,
  the process sends ``SIGNAL`` to its parent (a sweep) and waits until the parent passes a
  signal back: SIGTERM sets the run's stop flag, SIGINT raises KeyboardInterrupt.
- ``DSMD_TEST_SWEEP_CHILDREN=1``: a sweep starts its runs' ``dsmd train`` through this script,
  so that the points above apply to them (they inherit the environment).
- ``DSMD_TEST_HOLD=N``: after optimiser step ``N`` is logged, print ``holding`` and wait until
  standard input closes (the run holds its folder's lock meanwhile).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time


def _after_nth_call(spec: str) -> None:
    name, _, rest = spec.partition("@")
    target, _, nth = rest.partition("#")
    module_name, _, attr = target.partition(":")
    owner = importlib.import_module(module_name)
    *parents, leaf = attr.split(".")
    for part in parents:
        owner = getattr(owner, part)
    real, calls = getattr(owner, leaf), [0]

    def patched(*args, **kwargs):
        out = real(*args, **kwargs)
        calls[0] += 1
        if calls[0] == int(nth):
            os.kill(os.getpid(), getattr(signal, name))
        return out

    setattr(owner, leaf, patched)


def _signal_parent_at(spec: str) -> None:
    import dsmd.training.recipe as recipe

    name, _, step = spec.partition("@")
    real = recipe.stop_requested

    def stop_requested(run):
        if run.stepper.steps == int(step) and not run.stop.requested:
            os.kill(os.getppid(), getattr(signal, name))
            while not run.stop.requested:  # SIGTERM passed back sets it; SIGINT raises KeyboardInterrupt
                time.sleep(0.01)
        return real(run)

    recipe.stop_requested = stop_requested


def _hold_at(step: int) -> None:
    import dsmd.training.run_files as run_files

    real = run_files.RunFiles.step

    def logged(self, record):
        real(self, record)
        if record["step"] == step:
            self.flush()
            if self._board is not None:  # TensorBoard writes from a thread of its own: finish that too,
                self._board.flush()  # so the held folder's bytes stay as they are while it waits
            print("holding", flush=True)
            sys.stdin.read()

    run_files.RunFiles.step = logged


def _sweep_children() -> None:
    import dsmd.sweeps.runner as runner

    real = runner.commands

    def commands(run, python=sys.executable):
        train, evaluate = real(run, python)
        return [python, __file__, *train[3:]], evaluate  # train[:3] is python -m dsmd

    runner.commands = commands


if os.environ.get("DSMD_TEST_SIGNAL"):
    _after_nth_call(os.environ["DSMD_TEST_SIGNAL"])
if os.environ.get("DSMD_TEST_SIGNAL_PARENT"):
    _signal_parent_at(os.environ["DSMD_TEST_SIGNAL_PARENT"])
if os.environ.get("DSMD_TEST_HOLD"):
    _hold_at(int(os.environ["DSMD_TEST_HOLD"]))
if os.environ.get("DSMD_TEST_SWEEP_CHILDREN"):
    _sweep_children()

from dsmd.cli import main  # noqa: E402

main(sys.argv[1:])
