"""A study's record: one JSON line per finished run, the form in which sweep results are kept in git.

Runs live in a folder (``runs:`` of a sweep file, shared by the sweeps that name it) that is not
tracked: checkpoints, logs, TensorBoard files. When a run is scored, its record is added to
``RUNS.jsonl`` beside that folder (``sweeps/offline/runs`` -> ``sweeps/offline/runs.jsonl``)::

    {"format": 1, "run": "089c17e3b10f", "config": {...the run's full config...},
     "validation": [{"epoch": 1, "step": 16, "val_rsum": 90.1, "val_i2t_r1": ..., "val_t2i_r1": ...}, ...],
     "result": {"best_val_rsum": ..., "best_epoch": ..., "steps": ..., "seconds": ...},
     "test": {"i2t_r1": ..., "rsum": ..., "split": "test", "images": ..., "captions": ...}}

``dsmd sweep`` skips a run whose record holds its test metrics (its folder may be gone: a fresh
clone has none), and every table is regenerated from the records. Lines are sorted by run, the
file rewritten atomically under a lock (sweeps sharing the folder may finish runs at once).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from filelock import FileLock

from dsmd.config import config_to_dict
from dsmd.errors import DsmdError
from dsmd.runtime.files import read_json, read_json_lines, write_text_atomic

FORMAT = 1
VALIDATION_KEYS = ("epoch", "step", "val_rsum", "val_i2t_r1", "val_t2i_r1")
RESULT_KEYS = ("best_val_rsum", "best_epoch", "steps", "seconds")


def record_path(runs_dir: str | Path) -> Path:
    """The record of the runs folder ``runs_dir``: ``RUNS.jsonl`` beside it."""
    runs_dir = Path(runs_dir)
    return runs_dir.with_name(runs_dir.name + ".jsonl")


_CACHE: dict[str, tuple[tuple[int, int], dict[str, dict[str, Any]]]] = {}


def read_records(path: str | Path) -> dict[str, dict[str, Any]]:
    """The records of ``path`` by run (empty when the file does not exist); read again only when
    the file changed (its size and modification time).

    Raises:
        DsmdError: a line that is not a record of this format (by line).
    """
    path = Path(path)
    if not path.is_file():
        return {}
    st = path.stat()
    stamp = (st.st_size, st.st_mtime_ns)
    cached = _CACHE.get(str(path))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    records = _parse(path)
    _CACHE[str(path)] = (stamp, records)
    return records


def _parse(path: Path) -> dict[str, dict[str, Any]]:
    fix = "Restore it from git (git checkout -- FILE), or delete the line to run that run again."
    records = {}
    for number, record in enumerate(read_json_lines(path, fix), 1):
        if (
            record.get("format") != FORMAT
            or not isinstance(record.get("run"), str)
            or not isinstance(record.get("test"), dict)
        ):
            raise DsmdError(f"{path}: line {number} is not a run record of format {FORMAT}. {fix}")
        records[record["run"]] = record
    return records


def run_record(run) -> dict[str, Any]:
    """The record of a finished run (:class:`~dsmd.sweeps.spec.Run`): its config, validation curve,
    result and test metrics, read from its folder."""
    folder = Path(run.folder)
    fix = f"Score the run again: delete {folder / 'test.json'} and run the sweep."
    epochs = read_json_lines(folder / "epochs.jsonl", fix) if (folder / "epochs.jsonl").is_file() else []
    result = read_json(folder / "result.json", fix) if (folder / "result.json").is_file() else {}
    return {
        "format": FORMAT,
        "run": folder.name,
        "config": config_to_dict(run.cfg),
        "validation": [{k: e[k] for k in VALIDATION_KEYS if k in e} for e in epochs],
        "result": {k: result[k] for k in RESULT_KEYS if k in result},
        "test": read_json(folder / "test.json", fix),
    }


def add_record(runs_dir: str | Path, record: dict[str, Any]) -> None:
    """Add (or replace) ``record`` in the record of ``runs_dir``, atomically, under its lock."""
    path = record_path(runs_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        records = read_records(path)
        records[record["run"]] = record
        write_records(path, records)


def write_records(path: str | Path, records: dict[str, dict[str, Any]]) -> None:
    """Write ``records`` to ``path``, one line each, sorted by run."""
    lines = [json.dumps(records[run], sort_keys=True) + "\n" for run in sorted(records)]
    write_text_atomic(path, "".join(lines))
