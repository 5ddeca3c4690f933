"""Data-parallel training under torchrun (gloo on the CPU), checked against one process.

The runs use the tiny models of conftest.py on 25 training pairs (one image has a third
caption), batch 8: each epoch is steps of 8, 8, 8 and 1 pairs, so the last batch leaves rank
1 of 2 nothing but padding. Dropout is off and ``train.augment=false``: what remains differs
between world sizes only by floating-point rounding (matrix products over 4 rows instead of 8,
DDP's all-reduce), so parameters are compared with a tolerance and the queue, which holds
teacher features copied from the store, exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsmd.config import load_config, packaged_config
from dsmd.data.synthetic import write_synthetic_dataset
from dsmd.errors import DsmdError
from dsmd.extraction.extractor import extract
from dsmd.training import train
from dsmd.training.checkpoint import load_checkpoint
from dsmd.training.sampling import RankBatchSampler, epoch_order, micro_batch_size
from tiny_runs import NOT_COMPACT

pytestmark = pytest.mark.e2e  # whole commands on tiny models: the end-to-end tier

HELPER = Path(__file__).with_name("_torchrun_train.py")
QUIET = {"progress": False, "log": lambda *_: None}
# Parameters of runs on different world sizes after 4-8 AdamW steps: measured max |diff|
# 1.3e-7 to 4e-6 (float32 rounding of reductions in another order, most where Adam normalises
# small gradients: embeddings of rare tokens); an error in the gradients or the batches moves
# them by ~1e-3 (lr 1e-3).
PARAMS = {"rtol": 1e-5, "atol": 1e-5}
# The attention key biases shift every score of a softmax row by the same amount: their true
# gradient is 0, their computed one rounding noise (~1e-10), which Adam's normalisation turns
# into steps of ~lr in random directions. They are left out of the comparisons.
NOISE_ONLY = ("k_proj.bias", "attention.self.key.bias")


@pytest.fixture(scope="module")
def setup(tiny_models, tmp_path_factory) -> dict:
    """A store for 25 training pairs and the overrides of a 2-epoch run (out_dir to add)."""
    root = tmp_path_factory.mktemp("distributed")
    manifest = write_synthetic_dataset(root / "data", num_images=24, captions_per_image=2, size=32)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    lines[1]["captions"].append("a drawing of a " + lines[1]["captions"][0].split(" on ")[0][2:])  # a train image
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    overrides = [
        "data.kind=manifest",
        f"data.manifest={manifest}",
        "data.val_fraction=0.25",
        "data.test_fraction=0.25",
        "teacher.kind=hf_clip",
        f"teacher.name_or_path={tiny_models['clip']}",
        "teacher.batch_size=8",
        f"student.vision={tiny_models['vit']}",
        "student.image_size=32",
        "student.vision_head=features",
        "student.vision_proj_init=default",
        "store_views=0",
        f"student.text={tiny_models['bert']}",
        "student.text_layers=1",
        "student.max_text_length=16",
        "student.text_config={hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}",
        *NOT_COMPACT,
        "loss.queue_size=16",
        "train.epochs=2",
        "train.batch_size=8",
        "train.lr=1e-3",
        "train.lr_decay_epochs=[1]",
        "train.eval_batch_size=16",
        "train.device=cpu",
        "train.augment=false",
        "train.log_every=1",
        "train.dist_timeout_s=300",  # only a failure waits for it: a loaded machine may be slow to reach a barrier
        f"store={root / 'store'}",
    ]
    store = extract(_cfg(*overrides, f"out_dir={root / 'unused'}"), **QUIET)
    assert store.split("train").num_captions == 25
    return {"root": root, "overrides": overrides}


def _cfg(*overrides: str):
    """The config ``dsmd train KEY=VALUE ...`` builds (its base is the packaged demo config)."""
    return load_config(packaged_config("demo"), list(overrides))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _launch(
    args: list[str],
    nproc: int = 2,
    helper: list[str] | None = None,
    nodes: tuple[int, int] | None = None,
    port: int | None = None,
) -> subprocess.Popen:
    """Start ``torchrun ... -m dsmd ARGS`` (or the helper script) on loopback."""
    if nodes is None:
        where = ["--standalone"]
    else:
        where = [f"--nnodes={nodes[1]}", f"--node_rank={nodes[0]}", "--master_addr=127.0.0.1", f"--master_port={port}"]
    target = ["-m", "dsmd"] if helper is None else [str(HELPER), *helper, "--"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={nproc}", *target, *args]
    return subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _finish(proc: subprocess.Popen, timeout: float = 450) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"torchrun did not finish in {timeout}s:\n{out[-3000:]}") from None
    return proc.returncode, out


def _run(args: list[str], **kwargs) -> str:
    code, out = _finish(_launch(args, **kwargs))
    assert code == 0, out[-4000:]
    return out


def _assert_same_run(got: dict, want: dict, exact: bool = False) -> None:
    """Two checkpoints' parameters (within PARAMS, or bit for bit), queues (exactly) and positions."""
    assert (got["step"], got["epoch"], got["epoch_pairs"]) == (want["step"], want["epoch"], want["epoch_pairs"])
    assert got.keys() == want.keys()
    for part in ("model", "train_model") if "train_model" in want else ("model",):  # (and a moving average's)
        for key, value in want[part].items():
            if key.endswith(NOISE_ONLY) and not exact:
                continue
            if exact:
                assert torch.equal(got[part][key], value), key
            else:
                torch.testing.assert_close(got[part][key], value, **PARAMS, msg=key)
    for key, value in want["objective"].items():
        assert torch.equal(got["objective"][key], value), key
    assert got["balancer"]["step"] == want["balancer"]["step"]
    for name, history in want["balancer"]["history"].items():
        torch.testing.assert_close(
            torch.tensor(got["balancer"]["history"][name]), torch.tensor(history), rtol=1e-4, atol=1e-6
        )


def _record_grads(monkeypatch) -> list:
    """Patch AdamW.step to keep the gradients of every step (in parameter order)."""
    grads = []
    real = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        grads.append([p.grad.clone() for group in self.param_groups for p in group["params"]])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return grads


@pytest.fixture(scope="module")
def one_process(setup) -> dict:
    """The reference: one process, in this process, 2 epochs; its checkpoint and first gradients."""
    with pytest.MonkeyPatch.context() as mp:
        grads = _record_grads(mp)
        out = setup["root"] / "one"
        result = train(_cfg(*setup["overrides"], f"out_dir={out}"), **QUIET)
    assert result.steps == 8
    return {"state": load_checkpoint(out / "checkpoints" / "last.pt"), "grads": grads[0], "out": out}


@pytest.fixture(scope="module")
def two_processes(setup) -> dict:
    """torchrun, 2 processes on one node, 2 epochs; rank 0's first gradients."""
    out = setup["root"] / "two"
    run = _run(
        ["train", "--quiet", *setup["overrides"], f"out_dir={out}"],
        helper=["--grads", str(setup["root"] / "two_grads.pt")],
    )
    return {
        "state": load_checkpoint(out / "checkpoints" / "last.pt"),
        "out": out,
        "stdout": run,
        "grads": torch.load(setup["root"] / "two_grads.pt"),
    }


def test_two_processes_match_one(one_process, two_processes):
    # DDP averages the ranks' gradients and the gather's backward sums the ranks' copies of
    # the loss: together exactly the one-process gradient (AdamW alone would hide a factor).
    for got, want in zip(two_processes["grads"], one_process["grads"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    _assert_same_run(two_processes["state"], one_process["state"])
    assert two_processes["stdout"].count("best val RSUM") == 1  # rank 0 reports for both
    # rank 0 alone logs: one line per step, the same losses as one process
    one = [json.loads(line) for line in (one_process["out"] / "steps.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (two_processes["out"] / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two] == list(range(1, 9))
    for a, b in zip(two, one, strict=True):
        for key in ("cd", "fd", "sd", "hnd", "total", "w_cd", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert len((two_processes["out"] / "epochs.jsonl").read_text().splitlines()) == 2


def test_accumulation_clipping_and_recomputation_under_ddp(setup, monkeypatch):
    """Micro-batches without DDP's all-reduce but the last of each step (``no_sync``), a short
    last step, clipping, activation checkpointing and a moving average of the weights: still the
    one-process run."""
    extra = [
        "train.grad_accum_steps=2",
        "train.clip_grad_norm=1.0",
        "train.grad_checkpointing=true",
        "train.ema_decay=0.5",
        "train.epochs=1",
    ]
    grads = _record_grads(monkeypatch)
    train(_cfg(*setup["overrides"], *extra, f"out_dir={setup['root'] / 'accum_one'}"), **QUIET)
    out = setup["root"] / "accum_two"
    _run(
        ["train", "--quiet", *setup["overrides"], *extra, f"out_dir={out}"],
        helper=["--grads", str(setup["root"] / "accum_grads.pt")],
    )
    for got, want in zip(torch.load(setup["root"] / "accum_grads.pt"), grads[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    _assert_same_run(
        load_checkpoint(out / "checkpoints" / "last.pt"),
        load_checkpoint(setup["root"] / "accum_one" / "checkpoints" / "last.pt"),
    )
    assert [r["micro_batches"] for r in _steps(out)] == [2, 2, 2, 1]


def test_two_nodes(setup, two_processes):
    """Two torchrun launches, one process each, meeting at 127.0.0.1 as two nodes."""
    out, port = setup["root"] / "nodes", _free_port()
    args = ["train", "--quiet", *setup["overrides"], f"out_dir={out}"]
    nodes = [_launch(args, nproc=1, nodes=(rank, 2), port=port) for rank in (0, 1)]
    for node in nodes:
        code, log = _finish(node)
        assert code == 0, log[-4000:]
    # the same world size as two processes on one node: the same run, bit for bit
    _assert_same_run(load_checkpoint(out / "checkpoints" / "last.pt"), two_processes["state"], exact=True)


def test_killed_mid_epoch_resumes_on_two_or_one_processes(setup, one_process, two_processes):
    out = setup["root"] / "killed"
    args = ["train", "--quiet", *setup["overrides"], f"out_dir={out}", "train.checkpoint_every=2"]
    code, log = _finish(
        _launch(args, helper=["--kill-after-checkpoint", "6", "--pid-dir", str(setup["root"] / "pids")])
    )
    assert code == -signal.SIGKILL, log[-3000:]
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (state["epoch"], state["epoch_pairs"], state["step"]) == (1, 16, 6)  # 2 of epoch 2's 4 steps
    assert not list((out / "checkpoints").glob("*.tmp"))
    shutil.copytree(out, setup["root"] / "killed_copy")

    _run(["train", "--quiet", "--resume", f"out_dir={out}"])
    _assert_same_run(load_checkpoint(out / "checkpoints" / "last.pt"), two_processes["state"], exact=True)
    steps = [json.loads(line)["step"] for line in (out / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))

    # the checkpoint holds no per-rank state: one process continues where two stopped
    result = train(_cfg(f"out_dir={setup['root'] / 'killed_copy'}"), resume=True, **QUIET)
    assert result.steps == 8
    _assert_same_run(load_checkpoint(setup["root"] / "killed_copy" / "checkpoints" / "last.pt"), one_process["state"])


def test_sigterm_stops_every_rank_after_the_same_step_and_resumes_exactly(setup, two_processes):
    out = setup["root"] / "terminated"
    args = ["train", "--quiet", *setup["overrides"], f"out_dir={out}"]
    code, log = _finish(_launch(args, helper=["--term-agent-after", "3"]))
    assert code != 0, log[-3000:]
    # each rank exits 143 after the same step; rank 0 alone says so
    assert log.count("dsmd: terminated (SIGTERM) after step 3:") == 1 and "dsmd: error" not in log, log[-3000:]
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (state["epoch"], state["epoch_pairs"], state["step"]) == (0, 24, 3)  # 3 of epoch 1's 4 steps
    assert not list(out.rglob("*.tmp"))
    _run(["train", "--quiet", "--resume", f"out_dir={out}"])
    _assert_same_run(load_checkpoint(out / "checkpoints" / "last.pt"), two_processes["state"], exact=True)
    assert [r["step"] for r in _steps(out)] == list(range(1, 9))


def test_a_run_folder_in_use_stops_every_rank_with_one_line(setup):
    from dsmd.runtime.lock import acquire_folder

    out = setup["root"] / "in_use"
    out.mkdir()
    (out / "notes.txt").write_text("the other command's\n")
    with acquire_folder(out, "out_dir"):
        code, log = _finish(_launch(["train", "--quiet", *setup["overrides"], f"out_dir={out}"]))
    assert code != 0
    lines = [line for line in log.splitlines() if line.startswith("dsmd: ")]
    assert len(lines) == 1 and f"out_dir={out} is in use by another dsmd command (pid {os.getpid()}" in lines[0], log
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_interrupted_mid_epoch_resumes_in_one_process(setup, one_process, monkeypatch):
    import dsmd.training.run_files as loop

    out = setup["root"] / "interrupted"
    real = loop.save_checkpoint

    def save_then_interrupt(path, state):
        real(path, state)
        if state["step"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_interrupt)
    with pytest.raises(DsmdError, match="interrupted.*--resume"):
        train(_cfg(*setup["overrides"], f"out_dir={out}", "train.checkpoint_every=3"), **QUIET)
    monkeypatch.setattr(loop, "save_checkpoint", real)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch_pairs"] == 24
    train(_cfg(f"out_dir={out}"), resume=True, **QUIET)
    _assert_same_run(load_checkpoint(out / "checkpoints" / "last.pt"), one_process["state"], exact=True)


def test_a_dead_node_stops_the_other(setup):
    # The timeout is longer than _finish waits: the other node can only stop in time because it
    # sees its peer die, however slow the machine (no wall-clock bound is asserted).
    out, port = setup["root"] / "dead", _free_port()
    args = ["train", "--quiet", *setup["overrides"], f"out_dir={out}", "train.dist_timeout_s=600"]
    nodes = [_launch(args, nproc=1, nodes=(rank, 2), port=port, helper=["--die-after", "2"]) for rank in (0, 1)]
    (code0, log0), (code1, _) = (_finish(node, timeout=450) for node in nodes)
    assert code0 != 0 and code1 != 0
    assert "dsmd: error: rank 0/2:" in log0 and "another rank died" in log0, log0[-3000:]


def test_a_hung_rank_times_out(setup):
    args = ["train", "--quiet", *setup["overrides"], f"out_dir={setup['root'] / 'hung'}", "train.dist_timeout_s=8"]
    code, log = _finish(_launch(args, helper=["--hang-after", "2"]), timeout=450)
    assert code != 0
    assert "dsmd: error: rank 0/2:" in log and "train.dist_timeout_s=8s" in log, log[-3000:]


def test_batch_must_divide_over_the_processes(setup):
    code, log = _finish(
        _launch(["train", "--quiet", *setup["overrides"], f"out_dir={setup['root'] / 'odd'}", "train.batch_size=7"])
    )
    assert code != 0 and "train.batch_size=7 (the global batch) must divide by" in log and "x 2 processes" in log
    with pytest.raises(DsmdError, match="batch_size=8 .* grad_accum_steps=3"):
        micro_batch_size(8, 3, 1)


def test_rank_parts_make_the_world_size_independent_batches():
    order = epoch_order(25, seed=0, epoch=1).tolist()
    assert sorted(order) == list(range(25)) and order != epoch_order(25, seed=0, epoch=2).tolist()
    for world in (1, 2, 4):
        parts = [list(RankBatchSampler(25, 8, 0, 1, rank, world)) for rank in range(world)]
        for b in range(3):
            assert [j for p in parts for (_, j) in p[b]] == order[b * 8 : (b + 1) * 8]  # rank order = batch order
            assert len({len(p[b]) for p in parts}) == 1  # full micro-batches: equal parts
        # the short last micro-batch (1 pair) goes to rank 0; the others have no part to yield
        assert [len(p) for p in parts] == [4] + [3] * (world - 1)
        assert parts[0][3] == [(parts[0][3][0][0], order[24])]
        skipped = list(RankBatchSampler(25, 8, 0, 1, 0, world, skip=2))
        assert skipped == parts[0][2:]


# --- one process: precision, accumulation, clipping, activation checkpointing ---------------


def _one_run(setup, name: str, *overrides: str, monkeypatch=None) -> tuple[Path, list]:
    """Train in this process; returns the run folder and the gradients of each step."""
    grads = _record_grads(monkeypatch) if monkeypatch is not None else []
    out = setup["root"] / name
    train(_cfg(*setup["overrides"], f"out_dir={out}", *overrides), **QUIET)
    return out, grads


def _steps(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps(setup, precision):
    reference, _ = _one_run(setup, f"fp32_{precision}", "train.max_steps=2", "train.epochs=1")
    out, _ = _one_run(setup, precision, f"train.precision={precision}", "train.max_steps=2", "train.epochs=1")
    first, want = _steps(out)[0], _steps(reference)[0]
    # autocast ran (not bit-identical to fp32) and the losses, in float32, are close to fp32's
    assert first["total"] != want["total"] and first["total"] == pytest.approx(want["total"], rel=0.05)
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert all(v.dtype == torch.float32 for k, v in state["model"].items() if v.is_floating_point())
    assert bool(state["trainer"]["scaler"]) == (precision == "fp16")  # fp16 keeps its loss scale


def test_unsupported_precision_is_refused(setup, monkeypatch):
    with pytest.raises(DsmdError, match="'train.precision': 'fp8' is not allowed; choose one of fp32, bf16, fp16"):
        _cfg(*setup["overrides"], f"out_dir={setup['root'] / 'fp8'}", "train.precision=fp8")

    def no_autocast(*args, **kwargs):
        raise RuntimeError("autocast: dtype not supported on this device")

    monkeypatch.setattr(torch, "autocast", no_autocast)
    with pytest.raises(DsmdError, match="precision=fp16 is not supported on cpu.*fp32 or bf16"):
        train(_cfg(*setup["overrides"], f"out_dir={setup['root'] / 'nofp16'}", "train.precision=fp16"), **QUIET)


def test_accumulated_micro_batches_are_the_small_batch_run(setup, monkeypatch):
    """(batch 8, 2 micro-batches) = (batch 4) with an optimiser step every other batch.

    With lr 0 the parameters stay put, so both runs see the same features: the queue and the
    balancer must agree exactly, and each accumulated gradient must be the mean of the two
    small-batch gradients (the epoch's last step, one micro-batch of 1 pair, its own).
    """
    small, grads = _one_run(
        setup, "small", "train.batch_size=4", "train.lr=0.0", "train.epochs=1", monkeypatch=monkeypatch
    )
    small_grads = list(grads)
    accum, _ = _one_run(setup, "accum", "train.grad_accum_steps=2", "train.lr=0.0", "train.epochs=1")
    accum_grads = grads[len(small_grads) :]
    assert len(small_grads) == 7 and len(accum_grads) == 4
    pairs = [(0, 1), (2, 3), (4, 5), (6,)]
    for got, group in zip(accum_grads, pairs, strict=True):
        for k, g in enumerate(got):
            want = sum(small_grads[i][k] for i in group) / len(group)
            torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-7)
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (accum, small))
    for key, value in b["objective"].items():
        assert torch.equal(a["objective"][key], value), key
    assert a["balancer"] == b["balancer"]
    assert [r["micro_batches"] for r in _steps(accum)] == [2, 2, 2, 1]


def test_clipping_bounds_the_gradient_norm(setup, monkeypatch):
    out, grads = _one_run(
        setup, "clipped", "train.clip_grad_norm=0.01", "train.max_steps=3", "train.epochs=1", monkeypatch=monkeypatch
    )
    for step in grads:
        assert torch.linalg.vector_norm(torch.stack([g.norm() for g in step])) <= 0.01 * (1 + 1e-5)
    assert all(r["grad_norm"] > 0.01 for r in _steps(out))  # logged before clipping


def test_activation_checkpointing_gives_the_same_gradients(setup, monkeypatch):
    from dsmd.models import build_student
    from dsmd.models.vision import EfficientNetLite0Tower
    from dsmd.training.setup import enable_gradient_checkpointing

    _, grads = _one_run(setup, "plain", "train.max_steps=1", "train.epochs=1", monkeypatch=monkeypatch)
    _one_run(setup, "recomputed", "train.max_steps=1", "train.epochs=1", "train.grad_checkpointing=true")
    assert len(grads) == 2  # (the patch records both runs)
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)

    student = build_student(_cfg(*setup["overrides"]).student, 24)
    messages = []
    assert enable_gradient_checkpointing(student, messages.append) == ["vision", "text"]
    assert any(getattr(m, "gradient_checkpointing", False) for m in student.text.model.modules())
    student.vision = EfficientNetLite0Tower(pretrained=False, blocks=1)
    assert enable_gradient_checkpointing(student, messages.append) == ["text"]
    assert messages == [
        "train.grad_checkpointing: the vision tower (EfficientNetLite0Tower) does not support it; it runs without"
    ]


def test_streamed_shards_split_unevenly_train_every_pair_once(setup):
    """data.streaming: rank 0 reads 2 of the 3 training shards, rank 1 one; the rank that runs
    out first pads until the other is done, so the epoch still trains on every pair once
    (in bf16: autocast under DDP)."""
    import webdataset as wds

    from dsmd.data.datasets import load_dataset

    base = _cfg(*setup["overrides"])
    folder = setup["root"] / "shards"
    folder.mkdir()
    for split, data in load_dataset(base.data).items():
        for shard, start in enumerate(range(0, data.num_images, 4)):
            with wds.TarWriter(str(folder / f"{split}-{shard:06d}.tar")) as sink:
                for row in range(start, min(start + 4, data.num_images)):
                    caps = [c for c, r in zip(data.captions, data.caption_image, strict=True) if r == row]
                    sink.write(
                        {
                            "__key__": f"{row:06d}",
                            "png": Path(data.image_paths[row]).read_bytes(),
                            "txt": "\n".join(caps),
                        }
                    )
    overrides = [
        *[o for o in setup["overrides"] if not o.startswith(("data.", "store="))],
        "data.kind=webdataset",
        "data.streaming=true",
        "data.shuffle_buffer=5",
        f"data.manifest={folder / 'train-{000000..000002}.tar'}::{folder / 'val-{000000..000001}.tar'}"
        f"::{folder / 'test-{000000..000001}.tar'}",
        f"store={setup['root'] / 'shards_store'}",
        "train.epochs=1",
        "loss.queue_size=32",
        "train.precision=bf16",
    ]
    extract(_cfg(*overrides), **QUIET)
    out = setup["root"] / "streamed"
    _run(["train", "--quiet", *overrides, f"out_dir={out}"])
    queue = load_checkpoint(out / "checkpoints" / "last.pt")["objective"]
    train_split = load_dataset(_cfg(*overrides).data)["train"]
    assert int(queue["queue.count"]) == len(train_split) == 25
    want = torch.bincount(torch.tensor(train_split.caption_image), minlength=train_split.num_images)
    assert torch.equal(torch.bincount(queue["queue.image_ids"][:25], minlength=train_split.num_images), want)


def test_compiled_student_trains_like_the_eager_one(setup):
    out, _ = _one_run(setup, "compiled", "train.compile=true", "train.max_steps=1", "train.epochs=1")
    reference, _ = _one_run(setup, "eager", "train.max_steps=1", "train.epochs=1")
    for key in ("total", "cd", "fd", "sd", "hnd", "grad_norm"):
        assert _steps(out)[0][key] == pytest.approx(_steps(reference)[0][key], rel=1e-5, abs=1e-7), key
    got, want = (load_checkpoint(run / "checkpoints" / "last.pt")["model"] for run in (out, reference))
    assert got.keys() == want.keys()  # the bare student's names, no "_orig_mod." prefix
    for key, value in want.items():
        if not key.endswith(NOISE_ONLY):
            torch.testing.assert_close(got[key], value, **PARAMS, msg=key)
