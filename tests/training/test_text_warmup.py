"""The text warm-up (``train.text_warmup_epochs``): the text side alone moves toward the teacher's
caption features, the image side does not move, it runs once on a fresh run and never on a
resume, and a config asking for it without a caption pool is refused."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from dsmd.config import load_config
from dsmd.errors import DsmdError
from dsmd.extraction.extractor import extract
from dsmd.models import build_student
from dsmd.training import train
from dsmd.training.text_warmup import mean_cosine_distance, text_parameters, warm_up_text
from tiny_runs import tiny_run_overrides

QUIET = {"progress": False, "log": lambda *_: None}
CAPTIONS = ["red and blue", "a purple cross", "the orange triangle", "black square drawing", "white circle"]


@pytest.fixture(scope="module")
def tiny_student(tiny_models, synthetic_manifest, tmp_path_factory):
    cfg = load_config(None, tiny_run_overrides(tiny_models, synthetic_manifest, tmp_path_factory.mktemp("warm")))
    torch.manual_seed(0)
    return lambda: build_student(cfg.student, 16)


def _manual_cosine_distance(student, captions, targets) -> float:
    """The slow reference: one caption at a time, 1 - a.b / (|a| |b|)."""
    student.eval()
    total = 0.0
    with torch.no_grad():
        for caption, target in zip(captions, targets, strict=True):
            a = student.encode_captions([caption])[0].double()
            b = target.double()
            total += 1 - float(a @ b / (a.norm() * b.norm()))
    return total / len(captions)


def test_the_warm_up_moves_the_text_side_toward_the_targets_and_nothing_else(tiny_student):
    student = tiny_student()
    targets = torch.nn.functional.normalize(torch.randn(len(CAPTIONS), 16, generator=torch.Generator().manual_seed(1)))
    before = mean_cosine_distance(student, CAPTIONS, targets)
    assert before == pytest.approx(_manual_cosine_distance(student, CAPTIONS, targets), abs=1e-5)
    vision = {k: v.clone() for k, v in student.state_dict().items() if k.startswith(("vision.", "vision_proj."))}
    logged = []
    record = warm_up_text(student, CAPTIONS, targets, epochs=30, lr=1e-2, seed=0, progress=False, log=logged.append)
    assert record["before"] == pytest.approx(before) and record["after"] < before / 2
    assert record["after"] == pytest.approx(_manual_cosine_distance(student, CAPTIONS, targets), abs=1e-5)
    assert "text warm-up: 5 captions, 30 epochs" in logged[0]
    for key, value in student.state_dict().items():
        if key in vision:
            assert torch.equal(value, vision[key]), key
    names = {id(p) for p in text_parameters(student)}
    assert all(id(p) in names for p in student.text_proj.parameters())
    assert not any(id(p) in names for p in student.vision.parameters())


def test_the_warm_up_is_the_same_for_the_same_seed(tiny_student):
    targets = torch.nn.functional.normalize(torch.randn(len(CAPTIONS), 16, generator=torch.Generator().manual_seed(2)))
    start = tiny_student().state_dict()
    states = []
    for seed in (0, 0, 1):
        student = tiny_student()
        student.load_state_dict(start)
        torch.manual_seed(5)  # dropout draws from the global generator
        warm_up_text(student, CAPTIONS, targets, epochs=2, lr=1e-2, seed=seed, progress=False, log=lambda *_: None)
        states.append(student.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_a_warm_up_without_a_caption_pool_is_refused():
    with pytest.raises(DsmdError, match=r"train\.text_warmup_epochs.*data\.unpaired_texts is kind none.*set it to 0"):
        load_config(None, ["train.text_warmup_epochs=2"])
    with pytest.raises(DsmdError, match="text_warmup_epochs"):
        load_config(None, ["train.text_warmup_epochs=-1"])


@pytest.fixture(scope="module")
def store(tiny_models, synthetic_manifest, tmp_path_factory) -> dict:
    """A store with a caption pool and the overrides naming it."""
    root = tmp_path_factory.mktemp("warm_store")
    (root / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    overrides = [
        *tiny_run_overrides(tiny_models, synthetic_manifest, root),
        "data.unpaired_texts.kind=lines",
        f"data.unpaired_texts.path={root / 'captions.txt'}",
    ]
    extract(load_config(None, overrides), **QUIET)
    return {"root": root, "overrides": overrides}


@pytest.mark.e2e
def test_a_run_warms_up_once_and_its_resume_does_not(store):
    out = store["root"] / "run"
    settings = [*store["overrides"], "train.text_warmup_epochs=3", f"out_dir={out}"]
    logged = []
    train(load_config(None, [*settings, "train.max_steps=2"]), progress=False, log=logged.append)
    assert sum("text warm-up:" in line for line in logged) == 1
    line = next(line for line in logged if "text warm-up:" in line)
    assert re.search(r"text warm-up: \d+ captions, 3 epochs", line), line
    logged.clear()
    resume = load_config(None, [f"out_dir={out}"])
    train(resume, resume=True, resume_overrides=["train.max_steps=null"], progress=False, log=logged.append)
    assert not any("text warm-up:" in line for line in logged)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["text_warmup_epochs"] == 3


@pytest.mark.e2e
def test_without_a_warm_up_the_saved_config_has_no_warm_up_keys(store):
    out = store["root"] / "plain"
    train(load_config(None, [*store["overrides"], "train.epochs=1", f"out_dir={out}"]), **QUIET)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert "text_warmup_epochs" not in saved["train"] and "text_warmup_lr" not in saved["train"]
