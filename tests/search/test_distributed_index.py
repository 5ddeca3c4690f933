"""``torchrun --nproc_per_node 2 -m dsmd index``: ranks share the chunks, rank 0 writes the index,
which is the one-process index; a killed rank resumes.

Each test starts real torchrun process groups (gloo on the CPU) as subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dsmd
from dsmd.search.build import index_images
from dsmd.search.index import SKIPPED, Index

pytestmark = pytest.mark.e2e  # whole commands on tiny models: the end-to-end tier

HELPER = Path(__file__).with_name("_torchrun_index.py")


def _photos(folder: Path, count: int) -> Path:
    """``count`` small images of different colours and sizes, and one file that is not an image."""
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (30 + i % 5, 32), ((41 * i) % 256, (97 * i) % 256, (59 * i) % 256)).save(
            folder / f"{i:03d}.png"
        )
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def _torchrun(args: list[str], **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(HELPER)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([*cmd, "index", "--quiet", *args], env=full_env, capture_output=True, text=True, timeout=900)


def _assert_same_index(got: Index, want: Index) -> None:
    assert list(got.items) == list(want.items)  # the same items in the same order
    # one thread a rank against the test's threads: the same numbers up to float rounding
    np.testing.assert_allclose(np.asarray(got.vectors), np.asarray(want.vectors), rtol=1e-4, atol=1e-5)
    assert (got.path / SKIPPED).read_text() == (want.path / SKIPPED).read_text()
    assert got.meta["count"] == want.meta["count"] and got.index_kind == want.index_kind


@pytest.fixture
def reference(searchable, tmp_path):
    """20 images (and a broken file), indexed by one process."""
    photos = _photos(tmp_path / "photos", 20)
    encoder = dsmd.load_student(searchable["export"])
    index = index_images(tmp_path / "reference", encoder, [str(photos)], progress=False, log=lambda *_: None)
    args = ["--model", str(searchable["export"]), "--images", str(photos), "--out", str(tmp_path / "index")]
    return {"index": index, "args": args, "log": tmp_path / "saved.log", "out": tmp_path / "index"}


def test_two_processes_write_the_one_process_index(reference):
    run = _torchrun(reference["args"], DSMD_TEST_CHUNK="3", DSMD_TEST_SAVE_LOG=str(reference["log"]))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("new images added") == 1  # rank 0 reports for both
    saved = [line.split() for line in reference["log"].read_text().splitlines()]
    # 21 files in chunks of 3: 7 chunks, dealt out alternately
    assert sorted(name for _, name in saved) == [f"chunk-{k:05d}.npz" for k in range(7)]
    assert all(int(name[6:11]) % 2 == int(rank) for rank, name in saved)
    _assert_same_index(Index.open(reference["out"]), reference["index"])
    assert not Path(f"{reference['out']}.partial").exists()


def test_a_killed_rank_resumes(reference):
    hooks = {"DSMD_TEST_CHUNK": "3", "DSMD_TEST_SAVE_LOG": str(reference["log"])}
    run = _torchrun(reference["args"], DSMD_TEST_DIE_RANK="1", DSMD_TEST_DIE_AFTER="2", **hooks)
    assert run.returncode != 0
    partial = Path(f"{reference['out']}.partial")
    assert not reference["out"].exists() and (partial / "plan.json").is_file()
    first = [line.split() for line in reference["log"].read_text().splitlines()]
    assert [name for rank, name in first if rank == "1"] == ["chunk-00001.npz", "chunk-00003.npz"]
    on_disk = {p.name for p in partial.glob("chunk-*.npz") if ".tmp" not in p.name}
    assert {"chunk-00001.npz", "chunk-00003.npz"} <= on_disk

    reference["log"].unlink()
    run = _torchrun(reference["args"], **hooks)
    assert run.returncode == 0, run.stderr[-3000:]
    again = {line.split()[1] for line in reference["log"].read_text().splitlines()}
    assert not again & on_disk  # no chunk on disk is encoded again; every other one is, once
    assert again | on_disk == {f"chunk-{k:05d}.npz" for k in range(7)}
    _assert_same_index(Index.open(reference["out"]), reference["index"])
