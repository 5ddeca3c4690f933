"""Pictures of a run (dsmd report) and TensorBoard event files."""

from __future__ import annotations

import json

import pytest

from dsmd.config import RunConfig
from dsmd.errors import DsmdError
from dsmd.reports.run_plots import plot_run
from dsmd.training.run_files import RunFiles


def _run(folder, steps: int = 12):
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "steps.jsonl").open("w") as f:
        for s in range(1, steps + 1):
            record = {
                "step": s,
                "epoch": (s - 1) // 4,
                "lr": 1e-4,
                "total": 4 / s,
                "cd": 2 / s,
                "fd": 0.1 / s,
                "sd": 0.5 / s,
                "hnd": 1 / s,
                "w_cd": 1.0,
                "w_fd": 1.1,
                "w_sd": 0.9,
                "w_hnd": 1.0,
                "r_cd": 1.0,
                "r_fd": 0.9,
                "r_sd": 1.1,
                "r_hnd": 1.0,
                "s_cd": 2.0,
                "s_fd": 40.0,
                "s_sd": 8.0,
                "s_hnd": 4.0,
                "grad_norm": 1.0,
            }
            f.write(json.dumps(record) + "\n")
        f.write('{"step": 13, "to')  # a torn line is ignored
    (folder / "epochs.jsonl").write_text(
        "".join(
            json.dumps({"step": 4 * e, "epoch": e, "val_rsum": 100.0 + e, "val_i2t_r1": 10.0, "val_t2i_r1": 12.0})
            + "\n"
            for e in (1, 2, 3)
        )
    )


def test_report_draws_the_losses_balancer_and_validation(tmp_path):
    _run(tmp_path / "run")
    plots = plot_run(tmp_path / "run")
    assert [p.name for p in plots] == ["losses.png", "balancer.png", "validation.png"]
    assert all(p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG" for p in plots)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "![losses](plots/losses.png)" in report and "12 optimiser steps, 3 validations" in report


def test_a_damaged_line_before_the_last_is_refused_by_line(tmp_path):
    _run(tmp_path / "run")
    lines = (tmp_path / "run" / "steps.jsonl").read_bytes().splitlines(keepends=True)
    lines[5] = lines[5].replace(b'"total"', b'"to\xfftal"')  # a byte changed inside a key
    (tmp_path / "run" / "steps.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(DsmdError, match=r"steps.jsonl: line 6 is damaged"):
        plot_run(tmp_path / "run")


def test_report_of_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(DsmdError, match="not a training run folder"):
        plot_run(tmp_path)


def test_tensorboard_events_when_installed_and_a_note_when_not(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    files = RunFiles(tmp_path / "with", log=lambda *_: None)
    files.begin(RunConfig(out_dir=str(tmp_path / "with")), resume_step=None)
    files.step({"step": 1, "epoch": 0, "lr": 1e-4, "total": 1.0, "cd": 0.5, "w_cd": 1.0})
    files.epoch({"step": 1, "epoch": 1, "val_rsum": 100.0})
    files.close()
    events = list((tmp_path / "with" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tmp_path / "with" / "tensorboard"))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"loss/total", "loss/cd", "balancer/weight_cd", "train/lr", "val/rsum"} <= tags

    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    notes = []
    files = RunFiles(tmp_path / "without", log=notes.append)
    files.begin(RunConfig(out_dir=str(tmp_path / "without")), resume_step=None)
    files.step({"step": 1, "total": 1.0})
    files.close()
    assert not (tmp_path / "without" / "tensorboard").exists() and any(
        "tensorboard is not installed" in n for n in notes
    )
