"""The demo's wiring: extract, distil, score teacher and student, report; a second run resumes."""

from __future__ import annotations

import json

import pytest

from dsmd.demo import run_demo
from dsmd.reports import REPORT_KEYS

pytestmark = pytest.mark.e2e  # whole commands on tiny models: the end-to-end tier


def test_demo_reports_teacher_and_student_and_resumes(tiny_overrides, tmp_path):
    overrides = [o for o in tiny_overrides if not o.startswith(("store=", "out_dir="))]
    out = tmp_path / "demo"
    report = run_demo(out, overrides, progress=False, log=lambda *_: None)
    saved = json.loads((out / "report.json").read_text())
    assert set(saved) == {"teacher", "student", "asymmetric", "meta"}
    assert set(saved["asymmetric"]) == {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"}
    assert saved["meta"]["asymmetric_rsum_over_student"] == round(
        saved["asymmetric"]["rsum"] / saved["student"]["rsum"], 4
    )
    for model in ("teacher", "student"):
        assert set(REPORT_KEYS) <= set(saved[model])
        assert 0 <= saved[model]["rsum"] <= 600 and saved[model]["params"] > 0
    assert saved["meta"]["split"] == "test (6 images, 12 captions)"
    assert saved["meta"]["student_rsum_over_teacher"] == round(saved["student"]["rsum"] / saved["teacher"]["rsum"], 4)
    assert (out / "store" / "manifest.json").is_file() and (out / "train" / "checkpoints" / "best.pt").is_file()
    shares = saved["meta"]["student_share_of_teacher"]
    assert shares["params"] == round(saved["student"]["params"] / saved["teacher"]["params"], 4)
    assert set(shares) == {"rsum", "latency", "params"} and shares["rsum"] == saved["meta"]["student_rsum_over_teacher"]
    assert (
        "RSUM" in (out / "report.md").read_text() and "**student / teacher**: RSUM" in (out / "report.md").read_text()
    )
    # run again: nothing is recomputed, the scores are the same
    messages = []
    again = run_demo(out, overrides, progress=False, log=messages.append)
    assert any("up to date" in m for m in messages) and any("resuming" in m for m in messages)
    assert (
        again["student"]["rsum"] == report["student"]["rsum"] and again["teacher"]["rsum"] == report["teacher"]["rsum"]
    )
