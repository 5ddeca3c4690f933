"""Training with unpaired images and captions: which pool items each micro-batch takes, a run
with the u_* losses that resumes bit for bit, the same run on two processes, and a config
without them that trains exactly as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dsmd.config import load_config
from dsmd.data.synthetic import write_synthetic_dataset
from dsmd.data.unpaired_batches import concat_tokens
from dsmd.errors import DsmdError
from dsmd.extraction.extractor import extract
from dsmd.training import train
from dsmd.training.checkpoint import load_checkpoint
from dsmd.training.unpaired import UnpairedStream, pool_order
from tiny_runs import tiny_run_overrides

QUIET = {"progress": False, "log": lambda *_: None}
UNPAIRED = ["loss.losses=[cd, fd, sd, hnd, u_cd, u_fd, u_sd, u_hnd]", "train.unpaired_ratio=0.5"]
CAPTIONS = ["red and blue", "a purple cross", "the orange triangle", "black square drawing", "white circle"]


class _Pools:
    def __init__(self, images: int, texts: int):
        self.sizes = {"image": images, "text": texts}

    def size(self, modality: str) -> int:
        return self.sizes[modality]


def test_a_micro_batchs_items_do_not_depend_on_the_number_of_processes():
    stream = UnpairedStream(_Pools(5, 3), None, per_micro=4, seed=7, stride=3)
    for micro in range(6):
        for modality in ("image", "text"):  # each modality is gathered in rank order
            alone = [k for k in stream.keys(micro) if k[0] == modality]
            for world in (2, 4):
                parts = [stream.keys(micro, rank, world) for rank in range(world)]
                assert [k for part in parts for k in part if k[0] == modality] == alone
    # the stream passes over each pool in a fresh seeded order: positions 0..4 are one permutation
    images = [row for micro in range(5) for modality, _, row in stream.keys(micro) if modality == "image"]
    assert sorted(images[:5]) == list(range(5)) and images[:5] == pool_order(5, 7, "image", 0)
    assert images[5:10] == pool_order(5, 7, "image", 1) != images[:5]
    seeds = [seed for micro in range(5) for _, seed, _ in stream.keys(micro)]
    assert len(set(seeds)) == len(seeds)  # every drawn item has its own random crop


def test_a_pool_without_items_takes_nothing():
    stream = UnpairedStream(_Pools(0, 3), None, per_micro=2, seed=0, stride=3)
    assert {modality for modality, _, _ in stream.keys(1)} == {"text"}


def test_tokens_of_two_batches_are_joined_with_padding():
    a = (torch.tensor([[2, 5, 3]]), torch.tensor([[1, 1, 1]]))
    b = (torch.tensor([[2, 3], [2, 3]]), torch.tensor([[1, 1], [1, 1]]))
    ids, mask = concat_tokens(a, b, pad_id=0)
    assert ids.tolist() == [[2, 5, 3], [2, 3, 0], [2, 3, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0], [1, 1, 0]]
    ids, mask = concat_tokens(b, a, pad_id=9)
    assert ids.tolist() == [[2, 3, 9], [2, 3, 9], [2, 5, 3]] and mask[:2, 2].tolist() == [0, 0]


@pytest.fixture(scope="module")
def store(tiny_models, synthetic_manifest, tmp_path_factory) -> dict:
    """A store with both pools (7 drawings, 5 captions) and the overrides naming them."""
    root = tmp_path_factory.mktemp("unpaired")
    write_synthetic_dataset(root / "pool", num_images=7, captions_per_image=1, size=32, seed=3)
    (root / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    overrides = [
        *tiny_run_overrides(tiny_models, synthetic_manifest, root),
        "data.unpaired_images.kind=folder",
        f"data.unpaired_images.path={root / 'pool'}",
        "data.unpaired_texts.kind=lines",
        f"data.unpaired_texts.path={root / 'captions.txt'}",
    ]
    extract(load_config(None, overrides), **QUIET)
    return {"root": root, "overrides": overrides}


def _steps(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def _assert_same_state(got: dict, want: dict) -> None:
    for part in ("model", "objective"):
        assert got[part].keys() == want[part].keys()
        for key, value in want[part].items():
            assert torch.equal(got[part][key], value), f"{part} {key}"
    assert got["balancer"] == want["balancer"]


@pytest.mark.e2e
def test_a_run_with_unpaired_losses_trains_and_resumes_bit_for_bit(store):
    settings = [*store["overrides"], *UNPAIRED, "train.grad_accum_steps=2"]
    out = store["root"] / "full"
    train(load_config(None, [*settings, f"out_dir={out}"]), **QUIET)
    steps = _steps(out)
    assert len(steps) == 6 and steps[0]["micro_batches"] == 2  # 2 epochs x 3 steps of 8 pairs
    assert all(f"{p}_{n}" in steps[-1] for p in ("w", "r", "s") for n in ("u_cd", "u_fd", "u_sd", "u_hnd"))
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    # 4 images and 4 captions a step (ratio 0.5 x 8 pairs) for 6 steps, into queues of 16
    assert state["objective"]["unpaired_queues.image.count"].item() == 16
    assert sorted(set(state["objective"]["unpaired_queues.text.ids"].tolist())) == list(range(5))

    cut = store["root"] / "cut"
    train(load_config(None, [*settings, f"out_dir={cut}", "train.max_steps=4"]), **QUIET)
    train(load_config(None, [f"out_dir={cut}"]), resume=True, resume_overrides=["train.max_steps=null"], **QUIET)
    assert _steps(cut) == steps
    _assert_same_state(load_checkpoint(cut / "checkpoints" / "last.pt"), state)


@pytest.mark.e2e
def test_without_unpaired_losses_a_run_is_the_run_without_pools(store, tiny_models, synthetic_manifest):
    plain = tiny_run_overrides(tiny_models, synthetic_manifest, store["root"])  # the same store, no pools named
    runs = {}
    for name, overrides in (("plain", plain), ("pools", store["overrides"])):
        out = store["root"] / f"same_{name}"
        train(load_config(None, [*overrides, "train.epochs=1", f"out_dir={out}"]), **QUIET)
        runs[name] = (_steps(out), load_checkpoint(out / "checkpoints" / "last.pt"))
    assert runs["pools"][0] == runs["plain"][0]
    assert not any(key.startswith(("u_", "w_u_")) for key in runs["plain"][0][0])
    _assert_same_state(runs["pools"][1], runs["plain"][1])
    assert not any("unpaired" in key for key in runs["plain"][1]["objective"])
    saved = yaml.safe_load((store["root"] / "same_plain" / "config.yaml").read_text())
    assert "unpaired_images" not in saved["data"] and "unpaired_ratio" not in saved["train"]  # saved as before


@pytest.mark.e2e
def test_two_processes_train_the_one_process_run(store):
    settings = [
        *store["overrides"],
        *UNPAIRED,
        "train.epochs=1",
        "train.augment=false",
        "student.text_config={hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}",
        "train.dist_timeout_s=300",
    ]
    one, two = store["root"] / "one", store["root"] / "two"
    train(load_config("demo", [*settings, f"out_dir={one}"]), **QUIET)  # the base `dsmd train` starts from
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dsmd"]
    run = subprocess.run(
        [*cmd, "train", "--quiet", *settings, f"out_dir={two}"], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for a, b in zip(_steps(two), _steps(one), strict=True):
        for key in ("u_cd", "u_fd", "u_sd", "u_hnd", "total", "w_u_sd"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    got, want = (load_checkpoint(out / "checkpoints" / "last.pt") for out in (two, one))
    for key, value in want["objective"].items():  # teacher features from the store: exactly
        assert torch.equal(got["objective"][key], value), key
    for key, value in want["model"].items():
        if not key.endswith(("k_proj.bias", "attention.self.key.bias")):  # rounding noise (test_distributed.py)
            torch.testing.assert_close(got["model"][key], value, rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.e2e
def test_a_store_without_the_configs_pool_is_refused_before_training(store):
    other = [*store["overrides"], *UNPAIRED, "data.unpaired_images.limit=3", f"out_dir={store['root'] / 'refused'}"]
    with pytest.raises(DsmdError, match="another pool of unpaired images.*dsmd extract --overwrite"):
        train(load_config(None, other), **QUIET)
    assert not (store["root"] / "refused" / "checkpoints").exists()
