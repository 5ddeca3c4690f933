"""Running a sweep: the teacher once per store, then every unfinished run, several at a time.

Each run is ``dsmd train`` on its own folder (``RUN/request.yaml`` is its config) followed by
``dsmd eval --checkpoint RUN/checkpoints/best.pt --split test --json`` into ``RUN/test.json``,
then the run's line in the study's record (``RUNS.jsonl``, :mod:`dsmd.sweeps.records`); a run
in the record is finished and skipped (its folder may be gone), one with a checkpoint is
resumed, so an interrupted sweep continues where it stopped. Runs go in separate processes: ``jobs`` at a time,
the CPU threads shared between them (or one GPU each, when there are GPUs). A failed run is
reported by name (its error in ``RUN/error.txt``) and the others go on.

Two sweeps sharing a runs folder never run the same run: before starting a run, a sweep claims
it (the run folder's lock with ``role="sweep"``, :mod:`dsmd.runtime.lock`) and holds the claim
through training and evaluation; its ``dsmd train`` holds the folder's own lock. A run claimed by
another sweep, or being trained by another command, is skipped (not waited for): the sweep says
so, goes on with its other runs, writes its table from the runs finished, and the command ends
with exit status 2 naming the skipped runs; running it again once they are finished completes
the table. (Waiting instead could hold a sweep for as long as another's longest run.) A store
that another command is still extracting stops the sweep at once with that command's line: its
runs need the finished store.

Ctrl-C or SIGTERM: the runs start in their own process sessions, so the sweep alone receives a
terminal's Ctrl-C and passes the signal on to each run once; it waits for them (a training run
stopped by SIGTERM first writes a checkpoint of its current step), then stops with one line. A
second signal while it waits kills the runs outright. The same ``dsmd sweep`` continues them.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from dsmd.config import config_to_dict, save_config
from dsmd.errors import DsmdError
from dsmd.extraction import extract
from dsmd.runtime.files import write_text_atomic
from dsmd.runtime.lock import FolderInUse, FolderLock, acquire_folder, describe_holder, holder_of
from dsmd.runtime.signals import Stopped, Terminated, signal_of, stopped_word
from dsmd.sweeps.records import add_record, read_records, record_path, run_record
from dsmd.sweeps.spec import Run, Sweep

STORE_KEYS = ("data", "teacher", "store", "store_dtype", "store_views", "store_shard_rows")
# A store of some data serves every config of that data, with pools of unpaired data or without;
# a config with pools extends the store (dsmd.extraction.unpaired_tables).
POOL_KEYS = ("unpaired_images", "unpaired_texts")


def _store_keys(run: Run) -> tuple[str, str]:
    """The run's store key, and the same without the pools of unpaired data."""
    data = config_to_dict(run.cfg)
    key = {k: data[k] for k in STORE_KEYS}
    paired = {**key, "data": {k: v for k, v in key["data"].items() if k not in POOL_KEYS}}
    return repr(key), repr(paired)


def extract_stores(runs: list[Run], log: Callable[[str], None], progress: bool) -> None:
    """Extract each distinct store the runs need (once; an existing one is reused, and one that
    lacks the pools of unpaired data that a run adds is extended).

    Raises:
        DsmdError: two groups of runs need stores of different teachers or data at the same
            ``store`` path.
    """
    paired: dict[str, str] = {}  # store path -> its key without the pools
    done: set[str] = set()
    for run in runs:
        key, without_pools = _store_keys(run)
        if key in done:
            continue
        if paired.setdefault(run.cfg.store, without_pools) != without_pools:
            raise DsmdError(
                f"sweep {run.sweep}: variant '{run.variant}' changes the teacher or data but keeps "
                f"store={run.cfg.store}; give it its own store= in its overrides."
            )
        done.add(key)
        log(f"feature store {run.cfg.store}")
        extract(run.cfg, progress=progress, log=log)


def finished(run: Run) -> bool:
    """Whether ``run`` is scored: its record holds test metrics (:mod:`dsmd.sweeps.records`), or its
    folder holds ``test.json`` (a run scored before records, recorded when the sweep starts)."""
    return run.folder.name in read_records(record_path(run.folder.parent)) or (run.folder / "test.json").is_file()


def record_scored(runs: list[Run]) -> int:
    """Add the record of every run whose folder holds ``test.json`` but whose record is missing; how many."""
    added = 0
    for run in runs:
        if (run.folder / "test.json").is_file() and run.folder.name not in read_records(record_path(run.folder.parent)):
            add_record(run.folder.parent, run_record(run))
            added += 1
    return added


def distinct_runs(sweeps: Sweep | list[Sweep]) -> list[Run]:
    """The runs of one or several sweeps, a run they share (same folder) once, in order."""
    sweeps = [sweeps] if isinstance(sweeps, Sweep) else sweeps
    return list({run.folder: run for sweep in sweeps for run in sweep.runs}.values())


def commands(run: Run, python: str = sys.executable) -> tuple[list[str], list[str]]:
    """The train and eval command lines of a run (train resumes when a checkpoint is there)."""
    resume = (run.folder / "checkpoints" / "last.pt").is_file()
    train = [python, "-m", "dsmd", "train", "--quiet", "--config", str(run.folder / "request.yaml")]
    if resume:
        train = [python, "-m", "dsmd", "train", "--quiet", "--resume", f"out_dir={run.folder}"]
    evaluate = [
        python,
        "-m",
        "dsmd",
        "eval",
        "--quiet",
        "--checkpoint",
        str(run.folder / "checkpoints" / "best.pt"),
        "--split",
        "test",
        "--json",
    ]
    return train, evaluate


def prepare(run: Run) -> None:
    run.folder.mkdir(parents=True, exist_ok=True)
    if not (run.folder / "request.yaml").is_file():
        save_config(run.cfg, run.folder / "request.yaml")


def print_commands(sweeps: Sweep | list[Sweep]) -> list[str]:
    """The unfinished runs as command lines, for users who schedule them themselves.

    First one ``dsmd extract`` per feature store the runs need (the teacher once; each must
    finish before the runs that read it start), then one ``torchrun`` line per run (training,
    then the test split into ``RUN/test.json``), a run shared by several sweeps once. Running
    ``dsmd sweep`` again afterwards finds every run finished and writes the tables.
    """
    runs = [run for run in distinct_runs(sweeps) if not finished(run)]
    stores: dict[str, Run] = {}
    for run in runs:
        prepare(run)
        stores.setdefault(run.cfg.store, run)
    lines = [
        f"python -m dsmd extract --config {shlex.quote(str(run.folder / 'request.yaml'))}   # the teacher once: {store}"
        for store, run in stores.items()
    ]
    for run in runs:
        eval_cmd = commands(run, "python")[1]
        lines.append(
            f"torchrun --standalone --nproc_per_node 1 -m dsmd train --quiet --config "
            f"{shlex.quote(str(run.folder / 'request.yaml'))} && {shlex.join(eval_cmd)} > "
            f"{shlex.quote(str(run.folder / 'test.json'))}   # {run.variant}, seed {run.seed}"
        )
    return lines


def claim(run: Run) -> tuple[FolderLock | None, str]:
    """Claim ``run`` for this sweep: ``(the claim, "")``, or ``(None, who has it)`` when another
    sweep claimed it or another command is training it."""
    try:
        held = acquire_folder(run.folder, "run", role="sweep")
    except FolderInUse as exc:
        return None, f"another sweep is running it ({describe_holder(exc.holder)})"
    holder = holder_of(run.folder)
    if holder is not None:
        held.release()
        return None, f"another command is training it ({describe_holder(holder)})"
    return held, ""


class _Job:
    """One run in a child process: training, then evaluation, under the sweep's claim of the run."""

    def __init__(self, run: Run, env: dict[str, str], claim: FolderLock):
        self.run, self.env, self.claim = run, env, claim
        self.train_cmd, self.eval_cmd = commands(run)
        self.stage = "train"
        self.proc = self._start(self.train_cmd)

    def _start(self, cmd: list[str]) -> subprocess.Popen:
        # A session of its own: a terminal's Ctrl-C reaches the sweep alone, which passes it on once.
        return subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )

    def poll(self) -> str | None:
        """None while running; ``done``, ``failed``, or ``busy`` (refused: another command took
        the run folder since it was claimed) at the end."""
        if self.proc.poll() is None:
            return None
        out, err = self.proc.communicate()
        if self.proc.returncode != 0:
            if self.stage == "train" and self.proc.returncode == 2 and holder_of(self.run.folder) is not None:
                return "busy"
            write_text_atomic(self.run.folder / "error.txt", f"{' '.join(self.proc.args)}\n{err[-5000:]}")
            return "failed"
        if self.stage == "train":
            self.stage, self.proc = "eval", self._start(self.eval_cmd)
            return None
        write_text_atomic(self.run.folder / "test.json", out.strip().splitlines()[-1] + "\n")
        (self.run.folder / "error.txt").unlink(missing_ok=True)
        add_record(self.run.folder.parent, run_record(self.run))
        return "done"

    def stop(self, signum: int) -> None:
        """Pass ``signum`` on to the run's process (it stops on its own; :meth:`wait` for it)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self) -> None:
        """Wait for the run's process to end (reading its output, so a full pipe cannot block it)."""
        self.proc.communicate()

    def error(self) -> str:
        text = (self.run.folder / "error.txt").read_text() if (self.run.folder / "error.txt").is_file() else ""
        lines = [line for line in text.splitlines() if line.startswith("dsmd: error:")]
        return (lines[-1] if lines else text.strip().splitlines()[-1] if text.strip() else "failed")[:300]


def _env(slot: int, jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    gpus = _gpu_count()
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    else:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch CUDA: the CPU
        return 0


def run_sweep(
    sweep: Sweep | list[Sweep], jobs: int = 1, log: Callable[[str], None] = print, progress: bool = False
) -> list[Run]:
    """Run every unfinished run of ``sweep`` (see the module docstring); returns the failed runs.

    Several sweeps run as one pool: a run they share (same folder) runs once. A run that another
    sweep or command holds is skipped with a log line; it stays unfinished (neither finished nor
    failed: how the caller tells).

    Raises:
        Stopped: Ctrl-C or SIGTERM stopped the sweep (and, first, the runs in progress).
    """
    if jobs < 1:
        raise DsmdError(f"--jobs must be at least 1, got {jobs}.")
    sweeps = sweep if isinstance(sweep, list) else [sweep]
    unique = distinct_runs(sweeps)
    if added := record_scored(unique):
        log(f"recorded {added} runs scored before records existed")
    todo = [run for run in unique if not finished(run)]
    for s in sweeps:
        log(f"sweep {s.name}: {len(s.runs)} runs ({len(s.variants)} variants x {len(s.seeds)} seeds)")
    log(f"{len(unique)} distinct runs, {len(unique) - len(todo)} finished before, {len(todo)} to run, {jobs} at a time")
    running: dict[int, _Job] = {}
    try:
        if todo:
            extract_stores(todo, log, progress)
        return _run_pool(list(todo), jobs, running, log)
    except (KeyboardInterrupt, Terminated) as exc:
        signum = signal_of(exc)
        stop_jobs(list(running.values()), signum)
        kept = (
            "each wrote a checkpoint of its current step"
            if signum == signal.SIGTERM
            else "each keeps its last checkpoint"
        )
        raise Stopped(
            f"{stopped_word(signum)}: {len(running)} run(s) in progress stopped ({kept}); run the same "
            "`dsmd sweep` again to continue: finished runs are kept.",
            signum,
        ) from None
    finally:
        for job in running.values():
            job.claim.release()


def _run_pool(pending: list[Run], jobs: int, running: dict[int, _Job], log: Callable[[str], None]) -> list[Run]:
    """Start the ``pending`` runs ``jobs`` at a time (in ``running``, by slot) until all have ended."""
    failed: list[Run] = []
    t0 = time.perf_counter()
    while pending or running:
        free = [slot for slot in range(jobs) if slot not in running]
        while pending and free:
            run = pending.pop(0)
            held, busy = claim(run)
            if held is None:
                log(f"  skipped {run.variant}, seed {run.seed}: {busy}")
                continue
            if finished(run):  # another sweep finished it since this one looked
                held.release()
                continue
            prepare(run)
            slot = free.pop(0)
            running[slot] = _Job(run, _env(slot, jobs), held)
        time.sleep(0.2)
        for slot, job in list(running.items()):
            state = job.poll()
            if state is None:
                continue
            del running[slot]
            job.claim.release()
            if state == "failed":
                failed.append(job.run)
                log(f"  FAILED {job.run.variant}, seed {job.run.seed}: {job.error()}")
            elif state == "busy":
                log(f"  skipped {job.run.variant}, seed {job.run.seed}: another command took it before its training")
            else:
                log(f"  done {job.run.variant}, seed {job.run.seed} ({time.perf_counter() - t0:.0f} s)")
    return failed


def stop_jobs(jobs: list[_Job], signum: int) -> None:
    """Pass ``signum`` on to every job and wait for them; a second signal meanwhile kills them."""
    for job in jobs:
        job.stop(signum)
    try:
        for job in jobs:
            job.wait()
    except (KeyboardInterrupt, Terminated):
        for job in jobs:
            job.stop(signal.SIGKILL)
        for job in jobs:
            job.wait()


def rerun_failed_hint(failed: list[Run]) -> str:
    return "; ".join(f"{r.variant} (seed {r.seed}): see {Path(r.folder) / 'error.txt'}" for r in failed)
