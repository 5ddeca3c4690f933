"""``torchrun --nproc_per_node 2 -m dsmd extract``: ranks share the chunks, rank 0 writes the store.

Each test starts real torchrun process groups (gloo on the CPU) as subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dsmd.extraction.extractor as ex
from dsmd.config import load_config
from dsmd.store.feature_store import FeatureStore

pytestmark = pytest.mark.e2e  # whole commands on tiny models: the end-to-end tier

HELPER = Path(__file__).with_name("_torchrun_extract.py")
QUIET = {"progress": False, "log": lambda *_: None}


def _torchrun(target: list[str], args: list[str], nproc: int = 2, **env: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        *target,
        "extract",
        "--quiet",
        *args,
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=600)


def _assert_same_store(got: FeatureStore, want: FeatureStore, views: int) -> None:
    assert got.manifest["splits"] == want.manifest["splits"] and got.manifest["teacher"] == want.manifest["teacher"]
    for split in ("train", "val", "test"):
        a, b = got.split(split), want.split(split)
        # the ranks run with one thread each: the same numbers up to float rounding
        torch.testing.assert_close(a.image, b.image, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.text, b.text, rtol=1e-5, atol=1e-6)
        assert torch.equal(a.caption_image, b.caption_image)
        assert a.num_views == (views if split == "train" else 0)
        if a.num_views:
            torch.testing.assert_close(a.image_views, b.image_views, rtol=1e-5, atol=1e-6)


def test_two_processes_write_the_one_process_store(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, "store_views=1", "store_shard_rows=5"]
    reference = ex.extract(load_config(None, [*overrides, f"store={tmp_path / 'reference'}"]), **QUIET)
    run = _torchrun(["-m", "dsmd"], overrides)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("feature store:") == 1  # rank 0 reports for both
    store = FeatureStore.open(tmp_path / "store")
    assert not (tmp_path / "store.partial").exists()
    assert [r["file"] for r in store.files("train")] == [f"train-0000{k}-of-00005.safetensors" for k in range(5)]
    _assert_same_store(store, reference, views=1)


def test_a_killed_rank_resumes(tiny_overrides, tmp_path):
    # chunks of 5: train 12 images -> 3 image + 3 view + 5 text chunks, val/test 2 + 3 each: 21,
    # dealt out alternately to ranks 0 and 1
    overrides = [*tiny_overrides, "store_views=1", "teacher.batch_size=4"]
    monkey = {"DSMD_TEST_CHUNK_SIZE": "5", "DSMD_TEST_SAVE_LOG": str(tmp_path / "saved.log")}
    run = _torchrun([str(HELPER)], overrides, DSMD_TEST_DIE_RANK="1", DSMD_TEST_DIE_AFTER="3", **monkey)
    assert run.returncode != 0
    partial = tmp_path / "store.partial"
    assert not (tmp_path / "store").exists() and (partial / "pending.json").is_file()
    first = set((tmp_path / "saved.log").read_text().splitlines())
    assert sum(line.startswith("1 ") for line in first) == 3
    on_disk = {p.relative_to(partial / "chunks") for p in (partial / "chunks").rglob("*.safetensors")}
    assert len(on_disk) >= 3

    (tmp_path / "saved.log").unlink()
    run = _torchrun([str(HELPER)], overrides, **monkey)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "train: resuming from" in run.stdout
    again = {tuple(line.split()[1:]) for line in (tmp_path / "saved.log").read_text().splitlines()}
    # no chunk that was on disk is computed again; all the others are, once
    assert not again & {(p.parent.name, p.name) for p in on_disk}
    assert len(again) + len(on_disk) == 21
    monkeypatched = ex.CHUNK_SIZE
    try:
        ex.CHUNK_SIZE = 5
        reference = ex.extract(load_config(None, [*overrides, f"store={tmp_path / 'reference'}"]), **QUIET)
    finally:
        ex.CHUNK_SIZE = monkeypatched
    _assert_same_store(FeatureStore.open(tmp_path / "store"), reference, views=1)
