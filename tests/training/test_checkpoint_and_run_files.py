"""Checkpoints (round trip, no code from files, one-line mismatches) and a run's files (logs
cut back on resume, torn lines, a fresh start, best before last, leftovers removed)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from dsmd.config import RunConfig
from dsmd.errors import DsmdError
from dsmd.training.checkpoint import load_checkpoint, load_weights, save_checkpoint
from dsmd.training.run_files import RunFiles


class _Payload:
    """Unpickling this writes a marker file: what a crafted checkpoint could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_round_trip_keeps_every_value(tmp_path):
    state = {
        "config": {"train": {"lr": 1e-4}},
        "model": {"w": torch.arange(6.0).reshape(2, 3)},
        "best_rsum": float("-inf"),
        "balancer": {"history": {"cd": [1.0, 2.0]}, "step": 3},
        "val_metrics": None,
    }
    save_checkpoint(tmp_path / "c" / "last.pt", state)
    got = load_checkpoint(tmp_path / "c" / "last.pt")
    assert torch.equal(got["model"]["w"], state["model"]["w"]) and got["balancer"] == state["balancer"]
    assert got["best_rsum"] == float("-inf") and not list((tmp_path / "c").glob("*.tmp"))


def test_a_crafted_checkpoint_does_not_run_its_payload(tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({"config": {}, "model": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(DsmdError, match=r"pickles a Python object \(io\.open\).*Refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    # the payload is real: unpickling it without the guard runs it
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("seed", range(40))
def test_a_file_that_is_not_a_checkpoint(tmp_path, seed):
    # Junk bytes reach torch.load's parser in different ways (an unpickling error, a KeyError...):
    # every one of these fixed byte strings must give the same message.
    (tmp_path / "junk.pt").write_bytes(random.Random(seed).randbytes(64))
    with pytest.raises(DsmdError, match="cannot read checkpoint .*: it is not a PyTorch file, or it is corrupt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(DsmdError, match="not a dsmd checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_a_failed_write_leaves_the_old_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"config": {}, "model": {}, "epoch": 1})

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {"config": {}, "model": {}, "epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1 and not list(tmp_path.glob("*.tmp"))


def test_weights_of_another_architecture_are_summarised_in_one_line():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    other = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2), torch.nn.Linear(2, 2)).state_dict()
    with pytest.raises(DsmdError) as info:
        load_weights(model, other, "last.pt")
    message = str(info.value)
    assert "\n" not in message and "unexpected 2 (2.weight, 2.bias)" in message
    assert "other shapes 3 (0.weight (5, 3) vs (4, 3), 0.bias (5,) vs (4,), 1.weight (2, 5) vs (2, 4))" in message


def _lines(path):
    return path.read_text().splitlines()


def test_logs_are_cut_back_to_the_checkpoint_and_torn_lines_dropped(tmp_path):
    cfg = RunConfig(out_dir=str(tmp_path))
    (tmp_path / "steps.jsonl").write_text(
        "".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo'
    )
    (tmp_path / "epochs.jsonl").write_text(json.dumps({"step": 3, "epoch": 1}) + "\n" + json.dumps({"step": 5}) + "\n")
    notes = []
    files = RunFiles(tmp_path, log=notes.append)
    files.begin(cfg, resume_step=3)
    files.step({"step": 4, "new": True})
    files.close()
    assert _lines(tmp_path / "steps.jsonl") == [json.dumps({"step": s}) for s in (1, 2, 3)] + [
        '{"step": 4, "new": true}'
    ]
    assert _lines(tmp_path / "epochs.jsonl") == [json.dumps({"step": 3, "epoch": 1})]
    assert any("dropped 1 unreadable line" in n for n in notes)


def test_a_run_started_afresh_starts_its_logs_afresh(tmp_path):
    (tmp_path / "steps.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    files = RunFiles(tmp_path, log=lambda *_: None)
    files.begin(RunConfig(out_dir=str(tmp_path)), resume_step=None)
    files.step({"step": 1})
    files.close()
    assert _lines(tmp_path / "steps.jsonl") == [json.dumps({"step": 1})]
    assert (tmp_path / "config.yaml").is_file()


def test_best_is_written_before_last_and_leftovers_are_removed(tmp_path, monkeypatch):
    files = RunFiles(tmp_path, log=lambda *_: None)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.pt.tmp").write_bytes(b"left by a kill")
    files.begin(RunConfig(out_dir=str(tmp_path)), resume_step=None)
    assert not (tmp_path / "checkpoints" / "best.pt.tmp").exists()
    order = []
    import dsmd.training.run_files as run_files

    monkeypatch.setattr(run_files, "save_checkpoint", lambda path, state: order.append(path.name))
    files.checkpoint({"step": 1}, best=True)
    files.checkpoint({"step": 2}, best=False)
    assert order == ["best.pt", "last.pt", "last.pt"]


def test_off_rank_zero_nothing_is_written(tmp_path):
    files = RunFiles(tmp_path / "run", main=False)
    files.begin(RunConfig(out_dir=str(tmp_path / "run")), resume_step=None)
    files.step({"step": 1})
    files.checkpoint({"step": 1}, best=True)
    files.result({})
    assert not (tmp_path / "run").exists()
