"""Training killed at every kind of point of a run, resumed each time, ends with exactly the files of an
uninterrupted run.

The kills that the test counts on land where it says, whatever the machine's speed: the run kills
itself there (``_killable_train.py``). Kills from outside, at random moments, come on top; how many
of them land before the run finishes depends on the machine, so that number is not asserted.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dsmd.config import load_config
from dsmd.extraction import extract
from tiny_runs import tiny_run_overrides

HERE = Path(__file__).parent
SETTINGS = ["train.epochs=3", "train.batch_size=4", "train.checkpoint_every=2", "train.lr=3e-3", "train.log_every=1"]
pytestmark = pytest.mark.e2e
FILES = ["config.yaml", "steps.jsonl", "epochs.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"]
# 18 steps: 6 an epoch, a mid-epoch checkpoint every 2 steps, validation and a checkpoint at 6, 12, 18.


def _logged_steps(out: Path) -> int:
    try:
        return (out / "steps.jsonl").read_bytes().count(b"\n")
    except OSError:
        return 0


def _train(overrides: list[str], out: Path, kill: str | None = None) -> subprocess.Popen:
    """Start ``dsmd train`` (resuming when ``out`` holds a checkpoint); with ``kill``, one that kills
    itself at that point (``_killable_train.py``)."""
    resume = (out / "checkpoints" / "last.pt").is_file()
    cmd = [sys.executable, str(HERE / "_killable_train.py")] if kill else [sys.executable, "-m", "dsmd"]
    cmd += ["train", "--quiet", *(["--resume", f"out_dir={out}"] if resume else [*overrides, f"out_dir={out}"])]
    env = None if kill is None else {**os.environ, "DSMD_TEST_KILL": kill}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _end(proc: subprocess.Popen) -> int:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode in (0, -signal.SIGKILL), err[-2000:]
    return proc.returncode


def _difference(a: bytes, b: bytes) -> str:
    """Where the contents of two checkpoints differ ("" when they are equal).

    (Their bytes may differ even then: pickle writes a float once and refers back to it when two
    entries share one Python object, which depends on the run's history, not on the values.)
    """
    x, y = (torch.load(io.BytesIO(v), weights_only=True) for v in (a, b))
    out = []

    def walk(u, v, where):
        if isinstance(u, dict) and isinstance(v, dict):
            for k in sorted(set(u) | set(v), key=str):
                walk(u.get(k), v.get(k), f"{where}/{k}")
        elif isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor):
            if u.shape != v.shape or not torch.equal(u, v):
                out.append(where)
        elif u != v or type(u) is not type(v):
            out.append(f"{where}: {u!r} vs {v!r}"[:200])

    walk(x, y, "")
    return "; ".join(out[:10])


def _finished(out: Path) -> bool:
    return (out / "result.json").is_file()


def _snapshot(out: Path) -> dict[str, bytes]:
    files = {name: (out / name).read_bytes() for name in FILES}
    result = json.loads((out / "result.json").read_text())
    result.pop("seconds")  # how long it took is the one thing allowed to differ
    assert result.pop("sha256")  # (which is of the rest: seconds included)
    files["result.json"] = json.dumps(result, sort_keys=True).encode()
    return files


def _assert_same_files(out: Path, expected: dict[str, bytes]) -> None:
    got = _snapshot(out)
    for name in expected:
        if name.endswith(".pt"):  # equal contents: every tensor bit for bit, every other value
            assert _difference(got[name], expected[name]) == "", f"{name} differs from the uninterrupted run's"
        else:
            assert got[name] == expected[name], f"{name} differs from the uninterrupted run's"
    assert not list(out.rglob("*.tmp"))


@pytest.fixture(scope="module")
def uninterrupted(tiny_models, synthetic_manifest, tmp_path_factory):
    """The store, the overrides, and the files of the run trained without interruption."""
    root = tmp_path_factory.mktemp("kills")
    overrides = [*tiny_run_overrides(tiny_models, synthetic_manifest, root), *SETTINGS]
    extract(load_config(None, overrides), progress=False, log=lambda *_: None)
    out = root / "run"
    assert _end(_train(overrides, out)) == 0
    expected = _snapshot(out)
    shutil.rmtree(out)  # each test trains in this same folder: the config (and checkpoints) name it
    return {"overrides": overrides, "out": out, "expected": expected}


def _step(path: Path) -> int | None:
    return torch.load(path, weights_only=True)["step"] if path.is_file() else None


def _last_line_step(path: Path) -> int | None:
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1])["step"] if lines else None


def _state(out: Path) -> dict:
    """What a killed run left: the steps of its checkpoints and of its logs' last lines."""
    ck = out / "checkpoints"
    return {
        "last.pt": _step(ck / "last.pt"),
        "best.pt": _step(ck / "best.pt"),
        "last.pt.tmp": (ck / "last.pt.tmp").is_file(),
        "steps.jsonl": _last_line_step(out / "steps.jsonl"),
        "epochs.jsonl": _last_line_step(out / "epochs.jsonl"),
        "result.json": (out / "result.json").is_file(),
    }


# Each kill point in turn, each run resuming from what the previous one left, and what it leaves.
KILLS = [
    ("setup", {"last.pt": None, "steps.jsonl": None}),  # a fresh run, before its first step
    ("step@3", {"last.pt": 2, "steps.jsonl": 3}),  # between two checkpoints
    ("checkpoint-tmp@4", {"last.pt": 2, "last.pt.tmp": True}),  # a checkpoint written, not renamed
    ("best@6", {"best.pt": 6, "last.pt": 4}),  # best.pt ahead of last.pt
    ("validation@12", {"last.pt": 10, "steps.jsonl": 12, "epochs.jsonl": 6}),  # validated, not logged
    ("epoch-line@12", {"last.pt": 10, "epochs.jsonl": 12}),  # logged, not checkpointed
    ("setup", {"last.pt": 10, "steps.jsonl": 10, "epochs.jsonl": 6}),  # a resume, logs cut back, no step
    ("step@15", {"last.pt": 14, "steps.jsonl": 15}),
    ("result", {"last.pt": 18, "epochs.jsonl": 18, "result.json": False}),  # everything but result.json
]


def test_a_run_killed_at_every_kind_of_point_ends_as_the_uninterrupted_run(uninterrupted):
    overrides, out = uninterrupted["overrides"], uninterrupted["out"]
    for point, expected in KILLS:
        assert _end(_train(overrides, out, kill=point)) == -signal.SIGKILL, f"the kill at {point} did not land"
        state = _state(out)
        assert {k: state[k] for k in expected} == expected, f"after the kill at {point}: {state}"
    assert _end(_train(overrides, out)) == 0
    _assert_same_files(out, uninterrupted["expected"])


def test_random_kills_from_outside_leave_the_uninterrupted_run(uninterrupted):
    overrides, out = uninterrupted["overrides"], uninterrupted["out"]
    shutil.rmtree(out, ignore_errors=True)
    rng = random.Random(0)
    # SIGKILL a random 0-0.3 s after a given step is logged (0: while starting). On a fast machine
    # the run may finish before some of these land: how many do is not asserted.
    for at_step in [0, *sorted(rng.sample(range(3, 18), 4))]:
        if _finished(out):
            break
        proc = _train(overrides, out)
        while proc.poll() is None and _logged_steps(out) < at_step:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        _end(proc)
    while not _finished(out):
        _end(_train(overrides, out))
    _assert_same_files(out, uninterrupted["expected"])


def test_a_run_killed_before_its_first_checkpoint_starts_its_logs_again(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, *SETTINGS]
    extract(load_config(None, overrides), progress=False, log=lambda *_: None)
    out = tmp_path / "run"
    out.mkdir()
    (out / "steps.jsonl").write_text(json.dumps({"step": 1, "total": 0.5}) + "\n")  # what the killed run logged
    assert _end(_train(overrides, out)) == 0
    steps = [json.loads(line)["step"] for line in (out / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 19))


def test_sigterm_checkpoints_the_step_in_progress_and_resumes_to_the_uninterrupted_run(uninterrupted):
    overrides, out = uninterrupted["overrides"], uninterrupted["out"]
    shutil.rmtree(out, ignore_errors=True)
    # step 3 falls between two mid-epoch checkpoints; step 6 ends an epoch, before its validation
    for at_step, expected in [(3, {"epochs.jsonl": None}), (6, {"epochs.jsonl": None, "best.pt": None})]:
        proc = _train(overrides, out, kill=f"term@{at_step}")
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 143, err[-2000:]  # 128 + SIGTERM, from the run itself (not the signal's default)
        assert err.splitlines() == [
            f"dsmd: terminated (SIGTERM) after step {at_step}: checkpoint {out / 'checkpoints' / 'last.pt'} "
            f"written; continue with `dsmd train --resume out_dir={out}`."
        ]
        state = _state(out)
        assert state["last.pt"] == state["steps.jsonl"] == at_step and not state["last.pt.tmp"], state
        assert {k: state[k] for k in expected} == expected, state
        assert not list(out.rglob("*.tmp")) and not (out.parent / ".run.lock.json").exists()
    assert _end(_train(overrides, out)) == 0
    _assert_same_files(out, uninterrupted["expected"])
