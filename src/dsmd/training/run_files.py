"""A training run's files, all written from one place (rank 0).

::

    OUT/config.yaml           the resolved config (written atomically)
    OUT/steps.jsonl           one line per optimiser step: losses, balancer weights, lr, grad norm
    OUT/epochs.jsonl          one line per validation: val metrics
    OUT/checkpoints/last.pt   the latest checkpoint (every epoch, every checkpoint_every steps)
    OUT/checkpoints/best.pt   the checkpoint of the best validation RSUM
    OUT/result.json           written when the run finishes, with the size and sha256 of the two
                              logs and its own (``dsmd report`` checks them); a resumed run
                              removes it until it finishes again
    OUT/tensorboard/          TensorBoard event files of the same records (when tensorboard is
                              installed; :mod:`dsmd.training.tensorboard`)

Crash safety: checkpoints and ``result.json`` are replaced atomically. When a validation
improves, ``best.pt`` is written *before* ``last.pt``: a run killed between the two resumes from
the older ``last.pt``, repeats that epoch, and writes both again, so ``best.pt`` never stays
behind ``last.pt``. A resumed run drops the log lines written after its checkpoint (and a last
line torn by a crash); a run started again from scratch (no checkpoint yet) starts its logs
afresh. Temporary files a killed writer left behind are removed when the run starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from dsmd.config import RunConfig, save_config
from dsmd.runtime.checksums import file_records, sealed
from dsmd.runtime.files import remove_temporaries, write_json_atomic
from dsmd.training.checkpoint import save_checkpoint
from dsmd.training.tensorboard import open_writer, write_scalars

RESULT = "result.json"
LOGS = ("steps.jsonl", "epochs.jsonl")


def _kept_lines(path: Path, last_step: int) -> tuple[list[str], int]:
    """The lines of a log up to ``last_step``, and how many unreadable lines were dropped."""
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1  # a line torn by a crash (full disk, power loss)
            continue
        if isinstance(record, dict) and record.get("step", 0) <= last_step:
            kept.append(line)
    return kept, dropped


class RunFiles:
    """The files of the run in ``out_dir`` (see the module docstring); a no-op off rank 0.

    Args:
        out_dir: the run folder.
        main: whether this process writes (rank 0).
        log: where notes go (a log line torn by a crash, leftovers removed).
    """

    def __init__(self, out_dir: str | Path, main: bool = True, log=print):
        self.out = Path(out_dir)
        self.main = main
        self.log = log
        self.checkpoints = self.out / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.best = self.checkpoints / "best.pt"
        self._steps: IO[str] | None = None
        self._epochs: IO[str] | None = None
        self._board = None
        self._log_every = 1
        self._unflushed = 0

    def begin(self, cfg: RunConfig, resume_step: int | None, changes: dict | None = None) -> None:
        """Open the logs: cut back to ``resume_step`` when resuming, empty when starting afresh;
        write ``config.yaml`` when starting (a resumed run keeps the one it started with, and its
        ``changes``, ``{key: (old, new)}``, are said and appended to ``resumes.jsonl``); remove
        leftover temporary files."""
        if not self.main:
            return
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        for folder in (self.out, self.checkpoints):
            for stale in remove_temporaries(folder):
                self.log(f"removed {stale.name}, left by an interrupted write")
        if resume_step is None or not (self.out / "config.yaml").is_file():
            save_config(cfg, self.out / "config.yaml")
        if resume_step is not None:
            (self.out / RESULT).unlink(missing_ok=True)  # not finished until it finishes again
            resumes = self.out / "resumes.jsonl"
            kept = _kept_lines(resumes, resume_step)[0] if resumes.is_file() else []
            if changes:
                said = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())
                self.log(f"resuming at step {resume_step} with {said} (recorded in resumes.jsonl)")
                kept.append(json.dumps({"step": resume_step, "changes": {k: list(c) for k, c in changes.items()}}))
            if kept or resumes.is_file():
                write_json_lines(resumes, kept)
        self._log_every = max(1, cfg.train.log_every)
        self._steps = self._open("steps.jsonl", resume_step)
        self._epochs = self._open("epochs.jsonl", resume_step)
        self._board = open_writer(self.out / "tensorboard", resume_step, self.log)

    def _open(self, name: str, resume_step: int | None) -> IO[str]:
        path = self.out / name
        if resume_step is None or not path.is_file():
            return path.open("w", encoding="utf-8")
        kept, dropped = _kept_lines(path, resume_step)
        if dropped:
            self.log(f"{name}: dropped {dropped} unreadable line(s), torn by an interruption")
        write_json_lines(path, kept)
        return path.open("a", encoding="utf-8")

    def step(self, record: dict[str, Any]) -> None:
        """Append a step's record to ``steps.jsonl`` (flushed every ``train.log_every`` steps)."""
        if self._steps is not None:
            self._steps.write(json.dumps(record) + "\n")
            if self._board is not None:
                write_scalars(self._board, record, record["step"])
            self._unflushed += 1
            if self._unflushed >= self._log_every:
                self.flush()

    def epoch(self, record: dict[str, Any]) -> None:
        """Append a validation's record to ``epochs.jsonl``."""
        if self._epochs is not None:
            self._epochs.write(json.dumps(record) + "\n")
            self._epochs.flush()
            if self._board is not None:
                write_scalars(self._board, record, record["step"])
                self._board.flush()

    def flush(self) -> None:
        if self._steps is not None:
            self._steps.flush()
            self._unflushed = 0

    def checkpoint(self, state: dict[str, Any], best: bool) -> None:
        """Write ``last.pt`` (and first ``best.pt`` when this is the best so far)."""
        if not self.main:
            return
        self.flush()
        if best:
            save_checkpoint(self.best, state)
        save_checkpoint(self.last, state)

    def result(self, result: dict[str, Any]) -> None:
        """Write ``result.json``: ``result``, the logs' sizes and sha256 (``logs``), its own sha256."""
        if self.main:
            self.flush()
            if self._epochs is not None:
                self._epochs.flush()
            logs = file_records(self.out, [name for name in LOGS if (self.out / name).is_file()])
            write_json_atomic(self.out / RESULT, sealed({**result, "logs": logs}))

    def close(self) -> None:
        for f in (self._steps, self._epochs, self._board):
            if f is not None:
                f.close()
        self._steps = self._epochs = self._board = None


def write_json_lines(path: Path, lines: list[str]) -> None:
    """Replace a JSONL file with ``lines``, atomically."""
    from dsmd.runtime.files import write_text_atomic

    write_text_atomic(path, "".join(line + "\n" for line in lines))
