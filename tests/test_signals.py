"""Ctrl-C and SIGTERM end a command with one line, its exit status (130, 143), nothing half-written,
and the same command continuing from what was kept. The commands signal themselves at named points
(``_signal_self.py``), so nothing depends on the machine's speed. Training: the SIGTERM checkpoint and
exact resume in tests/training/test_kill_resume.py, under torchrun in test_distributed.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dsmd.config import load_config
from dsmd.extraction import extract
from dsmd.runtime.lock import lock_path
from dsmd.search.index import Index
from dsmd.store import FeatureStore
from tiny_runs import tiny_run_overrides, write_base_config

pytestmark = pytest.mark.e2e
SIGNAL_SELF = Path(__file__).with_name("_signal_self.py")
STOPS_HERE = "; the chunks finished so far are kept, and the same command continues from them"


@pytest.fixture(scope="module")
def prepared(tiny_models, synthetic_manifest, tmp_path_factory) -> dict:
    """The overrides of tiny runs and a store extracted for them."""
    root = tmp_path_factory.mktemp("signals")
    overrides = tiny_run_overrides(tiny_models, synthetic_manifest, root)
    extract(load_config(None, overrides), progress=False, log=lambda *_: None)
    return {"root": root, "overrides": overrides, "store": root / "store"}


def _dsmd(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """``dsmd ARGS`` through _signal_self.py, with its signal points in ``env``."""
    return subprocess.run(
        [sys.executable, str(SIGNAL_SELF), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _no_leftovers(root: Path) -> None:
    assert not list(root.rglob("*.tmp")), list(root.rglob("*.tmp"))
    assert not list(root.rglob(".*.lock*")), "a lock outlived its holder"


def test_ctrl_c_stops_an_extraction_after_whole_chunks_and_it_resumes(prepared, tmp_path):
    store = tmp_path / "store"
    overrides = [*prepared["overrides"], f"store={store}"]
    done = _dsmd(["extract", "--quiet", *overrides], DSMD_TEST_SIGNAL="SIGINT@dsmd.extraction.chunks:_Chunks.save#1")
    assert done.returncode == 130, done.stderr[-3000:]
    assert done.stderr.splitlines() == [f"dsmd: interrupted{STOPS_HERE}"]
    assert not store.exists()
    assert [p.name for p in (tmp_path / "store.partial" / "chunks" / "train").iterdir()] == ["image-00000.safetensors"]
    _no_leftovers(tmp_path)
    messages = []
    resumed = extract(load_config(None, overrides), progress=False, log=messages.append)
    assert "train: resuming from 1 finished chunks" in messages
    reference = FeatureStore.open(prepared["store"])
    for split in ("train", "val", "test"):
        assert torch.equal(resumed.split(split).text, reference.split(split).text)


def test_sigterm_stops_an_index_build_and_it_resumes(prepared, tmp_path):
    index = tmp_path / "index"
    args = ["index", "--quiet", "--out", str(index), "--teacher-store", str(prepared["store"]), "--split", "val"]
    done = _dsmd(args, DSMD_TEST_SIGNAL="SIGTERM@dsmd.search.build:_chunks#1")
    assert done.returncode == 143, done.stderr[-3000:]
    assert done.stderr.splitlines() == [f"dsmd: terminated (SIGTERM){STOPS_HERE}"]
    assert not index.exists() and (tmp_path / "index.partial" / "chunk-00000.npz").is_file()
    _no_leftovers(tmp_path)
    assert _dsmd(args).returncode == 0
    assert len(Index.open(index)) == 6 and not (tmp_path / "index.partial").exists()


def test_ctrl_c_stops_an_evaluation(prepared):
    args = ["eval", "--quiet", "--store", str(prepared["store"]), "--split", "val"]
    done = _dsmd(args, DSMD_TEST_SIGNAL="SIGINT@dsmd.store:FeatureStore.split#1")
    assert done.returncode == 130, done.stderr[-3000:]
    assert done.stderr.splitlines() == ["dsmd: interrupted"] and done.stdout == ""


def test_sigterm_stops_a_sweep_and_its_run_writes_a_checkpoint_first(prepared, tmp_path):
    write_base_config(tmp_path / "base.yaml", [*prepared["overrides"], "train.epochs=2", "train.log_every=1"])
    sweep = tmp_path / "sweep.yaml"
    body = {"base": str(tmp_path / "base.yaml"), "out_dir": str(tmp_path / "sweep"), "variants": {"tiny": []}}
    sweep.write_text(yaml.safe_dump(body))
    # the run signals the sweep (its parent) after its step 2, and waits until the sweep passes SIGTERM on
    done = _dsmd(["sweep", "--quiet", str(sweep)], DSMD_TEST_SWEEP_CHILDREN="1", DSMD_TEST_SIGNAL_PARENT="SIGTERM@2")
    assert done.returncode == 143, done.stderr[-3000:]
    assert done.stderr.splitlines() == [
        "dsmd: terminated (SIGTERM): 1 run(s) in progress stopped (each wrote a checkpoint of its current step); "
        "run the same `dsmd sweep` again to continue: finished runs are kept."
    ]
    [run] = [p for p in (tmp_path / "sweep" / "runs").iterdir() if p.is_dir()]
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 2
    assert not (run / "test.json").exists() and not (run / "error.txt").exists()
    assert not lock_path(run, role="sweep").with_name(f".{run.name}.sweep.lock.json").exists()
    _no_leftovers(tmp_path)
    again = _dsmd(["sweep", "--quiet", str(sweep)])
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "test.json").is_file()
    steps = (run / "steps.jsonl").read_text().splitlines()
    assert len(steps) == 6  # 2 epochs of 3 steps: the resumed run continued after step 2
