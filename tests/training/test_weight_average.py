"""The moving average of the student's weights (train.ema_decay): the average against a slow
reference, the checkpoint's parts, and a tiny run whose validation and best.pt are the
average's and whose resume continues it bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dsmd.config import load_config
from dsmd.data.datasets import load_split
from dsmd.evaluation.student_eval import evaluate_student
from dsmd.extraction.extractor import extract
from dsmd.training import recipe, train
from dsmd.training.checkpoint import load_checkpoint, student_from_state
from dsmd.training.weight_average import average_state, restore_average, update_average, weight_average
from tiny_runs import tiny_run_overrides

QUIET = {"progress": False, "log": lambda *_: None}


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _float_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def test_the_average_is_the_exponential_moving_average_of_every_step():
    torch.manual_seed(0)
    net, decay = _net(), 0.8
    average = weight_average(net, decay)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    reference = None
    for _ in range(5):
        optimizer.zero_grad()
        net(torch.randn(6, 3)).square().mean().backward()  # train mode: BatchNorm's statistics move too
        optimizer.step()
        update_average(average, net)
        now = _float_state(net)
        reference = now if reference is None else {k: decay * reference[k] + (1 - decay) * now[k] for k in now}
    got = _float_state(average.module)
    assert got.keys() == reference.keys() and "1.running_mean" in got
    for key, value in reference.items():
        torch.testing.assert_close(got[key], value, msg=key)
    assert not torch.allclose(got["0.weight"], net[0].weight)  # the average is not the last weights
    assert average.n_averaged.item() == 5


def test_a_checkpoints_parts_restore_the_student_and_its_average():
    torch.manual_seed(0)
    net = _net()
    average = weight_average(net, 0.5)
    update_average(average, net)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    update_average(average, net)
    state = average_state(average, net)
    assert state["ema_updates"] == 2 and set(state) == {"model", "train_model", "ema_updates"}
    assert torch.equal(state["model"]["0.weight"], net[0].weight - 0.5)

    other = _net()
    other_average = weight_average(other, 0.5)
    restore_average(other_average, other, state, "test")
    assert torch.equal(other[0].weight, net[0].weight)
    assert torch.equal(other_average.module[0].weight, average.module[0].weight)
    assert other_average.n_averaged.item() == 2

    plain = _net()
    restore_average(None, plain, state, "test")  # resumed with the average turned off: the trained weights
    assert torch.equal(plain[0].weight, net[0].weight)
    assert set(average_state(None, plain)) == {"model"}

    fresh = weight_average(_net(), 0.5)  # turned on at resume: starts from the weights it resumes
    restore_average(fresh, plain, {"model": net.state_dict()}, "test")
    update_average(fresh, plain)
    assert torch.equal(fresh.module[0].weight, net[0].weight)


@pytest.fixture(scope="module")
def averaged(tiny_models, synthetic_manifest, tmp_path_factory) -> dict:
    """A 3-epoch tiny run with an average, and the weights of each student its validation scored."""
    root = tmp_path_factory.mktemp("ema")
    overrides = [*tiny_run_overrides(tiny_models, synthetic_manifest, root), "train.ema_decay=0.5", "train.epochs=3"]
    extract(load_config("demo", overrides), **QUIET)
    scored = []

    def recording(student, *args, **kwargs):
        scored.append({k: v.clone() for k, v in student.state_dict().items()})
        return evaluate_student(student, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recipe, "evaluate_student", recording)
        train(load_config("demo", [*overrides, f"out_dir={root / 'full'}"]), **QUIET)
    return {"root": root, "overrides": overrides, "scored": scored}


@pytest.mark.e2e
def test_validation_and_best_checkpoint_are_the_averages(averaged):
    out = averaged["root"] / "full"
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["ema_updates"] == state["step"] == 9  # 3 epochs of 3 steps
    assert any(not torch.equal(state["model"][k], state["train_model"][k]) for k in state["model"])
    assert len(averaged["scored"]) == 3
    for key, value in state["model"].items():  # the loop scored the average, not the trained weights
        assert torch.equal(averaged["scored"][-1][key], value), key
    cfg = load_config("demo", averaged["overrides"])
    val = load_split(cfg.data, "val")
    scored = evaluate_student(student_from_state(state, "last.pt"), val, 16, torch.device("cpu"))
    last_epoch = json.loads((out / "epochs.jsonl").read_text().splitlines()[-1])
    assert scored["rsum"] == pytest.approx(last_epoch["val_rsum"])  # and dsmd eval of last.pt agrees
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert best["val_metrics"]["rsum"] == best["best_rsum"] and "train_model" in best


@pytest.mark.e2e
def test_a_run_with_an_average_resumes_bit_for_bit(averaged):
    full = load_checkpoint(averaged["root"] / "full" / "checkpoints" / "last.pt")
    cut = averaged["root"] / "cut"
    train(load_config("demo", [*averaged["overrides"], f"out_dir={cut}", "train.max_steps=4"]), **QUIET)
    train(load_config(None, [f"out_dir={cut}"]), resume=True, resume_overrides=["train.max_steps=null"], **QUIET)
    resumed = load_checkpoint(cut / "checkpoints" / "last.pt")
    assert resumed["ema_updates"] == full["ema_updates"]
    for part in ("model", "train_model"):
        for key, value in full[part].items():
            assert torch.equal(resumed[part][key], value), f"{part} {key}"
