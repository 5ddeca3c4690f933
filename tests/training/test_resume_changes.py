"""``dsmd train --resume`` with overrides: settings of how long and where a run goes on may
change, and are said and recorded in resumes.jsonl; anything else is refused in one line, and
config.yaml keeps the config the run started with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dsmd.cli import main
from dsmd.config import load_config
from dsmd.errors import DsmdError
from dsmd.extraction import extract
from dsmd.training import train
from dsmd.training.resume_changes import check_resume_changes, config_changes

QUIET = {"progress": False, "log": lambda *_: None}


def test_changes_are_every_setting_that_differs_and_only_resumable_ones_pass():
    before = load_config(None, ["train.batch_size=32"])
    after = load_config(None, ["train.batch_size=16", "train.epochs=30", "train.device=cpu"])
    changes = config_changes(before, after)
    assert changes == {"train.batch_size": (32, 16), "train.device": ("auto", "cpu"), "train.epochs": (20, 30)}
    with pytest.raises(DsmdError, match=r"train\.batch_size \(32 -> 16\) cannot change when a run resumes"):
        check_resume_changes(changes)
    allowed = {k: v for k, v in changes.items() if k != "train.batch_size"}
    assert check_resume_changes({**allowed, "out_dir": ("a", "b")}) == allowed  # a moved folder is not a change


@pytest.mark.e2e
def test_a_resume_with_other_settings_is_refused_or_recorded(tiny_overrides, capsys):
    cfg = load_config(None, [*tiny_overrides, "train.epochs=1"])
    extract(cfg, **QUIET)
    train(cfg, **QUIET)
    out = Path(cfg.out_dir)
    started = (out / "config.yaml").read_text()
    steps = (out / "steps.jsonl").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        main(["train", "--resume", f"out_dir={out}", "train.batch_size=2"])
    err = capsys.readouterr().err.strip()
    assert ended.value.code == 2 and len(err.splitlines()) == 1 and "train.batch_size" in err, err
    assert (out / "config.yaml").read_text() == started and (out / "steps.jsonl").read_text() == steps
    said = []
    result = train(cfg, resume=True, resume_overrides=["train.epochs=2"], progress=False, log=said.append)
    first = json.loads(steps.splitlines()[-1])["step"]
    assert any(f"resuming at step {first} with train.epochs 1 -> 2" in line for line in said)
    records = [json.loads(line) for line in (out / "resumes.jsonl").read_text().splitlines()]
    assert records == [{"step": first, "changes": {"train.epochs": [1, 2]}}]
    assert (out / "config.yaml").read_text() == started  # the run's record of how it started
    assert yaml.safe_load(started)["train"]["epochs"] == 1 and result.steps == 2 * first
