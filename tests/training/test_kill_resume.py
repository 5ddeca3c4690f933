"""Training killed at random points (and between writing best.pt and last.pt), resumed each time,
ends with exactly the files of an uninterrupted run."""

from __future__ import annotations

import io
import json
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

HERE = Path(__file__).parent
SETTINGS = ["train.epochs=3", "train.batch_size=4", "train.checkpoint_every=2", "train.lr=3e-3", "train.log_every=1"]
pytestmark = pytest.mark.e2e
FILES = ["config.yaml", "steps.jsonl", "epochs.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"]


def _logged_steps(out: Path) -> int:
    try:
        return (out / "steps.jsonl").read_bytes().count(b"\n")
    except OSError:
        return 0


def _train(
    overrides: list[str],
    out: Path,
    resume: bool,
    script: str | None = None,
    kill_at_step: int | None = None,
    jitter: float = 0.0,
) -> int | None:
    """Run ``dsmd train``; with ``kill_at_step``, SIGKILL it ``jitter`` seconds after that step is logged
    (0: as soon as the process starts)."""
    cmd = [sys.executable, str(HERE / script)] if script else [sys.executable, "-m", "dsmd"]
    cmd += ["train", "--quiet", *(["--resume", f"out_dir={out}"] if resume else [*overrides, f"out_dir={out}"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill_at_step is not None:
        while proc.poll() is None and kill_at_step and _logged_steps(out) < kill_at_step:
            time.sleep(0.005)
        time.sleep(jitter)
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
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
    files["result.json"] = json.dumps(result, sort_keys=True).encode()
    return files


def test_random_kills_and_a_kill_between_best_and_last_leave_the_uninterrupted_run(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, *SETTINGS]
    extract(load_config(None, overrides), progress=False, log=lambda *_: None)
    out = tmp_path / "run"  # the same folder for both runs: the config (and checkpoints) name it
    assert _train(overrides, out, resume=False) == 0
    expected = _snapshot(out)
    shutil.rmtree(out)

    # 1) killed right after best.pt of epoch 1 is written, before last.pt: best.pt is ahead of
    #    last.pt (a mid-epoch checkpoint) until the resumed run repeats the end of that epoch
    assert _train(overrides, out, resume=False, script="_killable_train.py") == -signal.SIGKILL
    assert (out / "checkpoints" / "best.pt").is_file()
    # 2) killed at random moments: while starting, training, validating or writing a checkpoint
    rng = random.Random(0)
    points = [(0, rng.uniform(0.5, 2.0))] + [
        (step, rng.uniform(0.0, 0.2)) for step in sorted(rng.sample(range(5, 19), 5))
    ]
    kills = 0
    for step, jitter in points:
        code = _train(
            overrides, out, resume=(out / "checkpoints" / "last.pt").is_file(), kill_at_step=step, jitter=jitter
        )
        kills += code == -signal.SIGKILL
        if _finished(out):
            break
    # 3) then to the end
    while not _finished(out):
        _train(overrides, out, resume=(out / "checkpoints" / "last.pt").is_file())
    assert kills >= 4, f"only {kills} kills landed before the run finished"
    got = _snapshot(out)
    for name in expected:
        if name.endswith(".pt"):  # equal contents: every tensor bit for bit, every other value
            assert _difference(got[name], expected[name]) == "", f"{name} differs from the uninterrupted run's"
        else:
            assert got[name] == expected[name], f"{name} differs from the uninterrupted run's"
    assert not list(out.rglob("*.tmp"))


def test_a_run_killed_before_its_first_checkpoint_starts_its_logs_again(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, *SETTINGS]
    extract(load_config(None, overrides), progress=False, log=lambda *_: None)
    out = tmp_path / "run"
    out.mkdir()
    (out / "steps.jsonl").write_text(json.dumps({"step": 1, "total": 0.5}) + "\n")  # what the killed run logged
    assert _train(overrides, out, resume=False) == 0
    steps = [json.loads(line)["step"] for line in (out / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 19))
