"""A run that diverges stops with one line at the step it happened, never with a traceback and
never with a NaN checkpoint: a non-finite loss, or weights the optimiser step made non-finite
(also on the last step before a validation); ``--resume`` is offered only when a checkpoint
exists to resume from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsmd.config import load_config
from dsmd.errors import DsmdError
from dsmd.extraction import extract
from dsmd.training import train
from dsmd.training.checkpoint import load_checkpoint
from dsmd.training.step import non_finite_weights

QUIET = {"progress": False, "log": lambda *_: None}


def test_non_finite_weights_are_named():
    layer = torch.nn.Linear(2, 2)
    assert non_finite_weights(layer) == []
    with torch.no_grad():
        layer.bias[1] = float("inf")
    assert non_finite_weights(layer) == ["bias"]


def _poison(monkeypatch, call: int) -> None:
    """The optimiser's ``call``-th update (counted from now) writes NaN into its first weight."""
    calls = {"n": 0}
    original = torch.optim.AdamW.step

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == call:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)


@pytest.mark.e2e
def test_weights_that_turn_nan_stop_the_run_in_one_line_without_resume_when_nothing_was_saved(
    tiny_overrides, monkeypatch
):
    cfg = load_config(None, [*tiny_overrides, "train.epochs=1"])
    extract(cfg, **QUIET)
    _poison(monkeypatch, 1)
    with pytest.raises(DsmdError) as failed:
        train(cfg, **QUIET)
    line = str(failed.value)
    assert "\n" not in line and line.startswith("training diverged at step 1: the optimiser step left NaN or inf")
    assert "start again: no checkpoint was written" in line and "--resume" not in line
    assert not (Path(cfg.out_dir) / "checkpoints" / "last.pt").exists()


@pytest.mark.e2e
def test_weights_that_turn_nan_just_before_a_validation_keep_the_last_checkpoint_and_offer_resume(
    tiny_overrides, monkeypatch
):
    cfg = load_config(None, [*tiny_overrides, "train.epochs=1"])
    extract(cfg, **QUIET)
    steps = train(cfg, **QUIET).steps  # epoch 1, checkpointed
    last = Path(cfg.out_dir) / "checkpoints" / "last.pt"
    before = last.read_bytes()
    _poison(monkeypatch, steps)  # the last step of epoch 2, just before its validation
    with pytest.raises(DsmdError) as failed:
        train(cfg, resume=True, resume_overrides=["train.epochs=2"], **QUIET)
    line = str(failed.value)
    assert "\n" not in line and line.startswith(f"training diverged at step {2 * steps}: the optimiser step left")
    assert f"`dsmd train --resume out_dir={cfg.out_dir}` continues from the last checkpoint" in line
    assert last.read_bytes() == before  # no NaN checkpoint
    state = load_checkpoint(last)
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point())
