"""The demo's wiring: extract, distil, score teacher and student, report; a second run resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsmd.data.synthetic import write_synthetic_dataset
from dsmd.demo import run_demo
from dsmd.reports import REPORT_KEYS

pytestmark = pytest.mark.e2e  # whole commands on tiny models: the end-to-end tier


def test_demo_reports_teacher_and_student_and_resumes(tiny_overrides, tmp_path):
    overrides = [o for o in tiny_overrides if not o.startswith(("store=", "out_dir="))]
    out = tmp_path / "demo"
    drawn = write_synthetic_dataset(tmp_path / "drawings", num_images=5, captions_per_image=1, size=32, seed=7)
    tests = [{**json.loads(line), "split": "test"} for line in Path(drawn).read_text().splitlines()]
    Path(drawn).write_text("".join(json.dumps(t) + "\n" for t in tests))
    heldout = {"drawings": drawn}  # a set of images that the run never trains on
    report = run_demo(out, overrides, progress=False, log=lambda *_: None, heldout=heldout)
    saved = json.loads((out / "report.json").read_text())
    assert set(saved) == {"teacher", "student", "asymmetric", "heldout", "meta"}
    other = saved["heldout"]["drawings"]
    assert (other["images"], other["captions"]) == (len(tests), sum(len(t["captions"]) for t in tests))
    assert set(other) == {"images", "captions", "teacher", "student"}
    assert saved["meta"]["student_rsum_over_teacher_heldout"]["drawings"] == round(
        other["student"]["rsum"] / other["teacher"]["rsum"], 4
    )
    assert (out / "heldout" / "teacher_drawings.safetensors").is_file()
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
    assert set(shares) == {"rsum", "i2t_r1", "t2i_r1", "latency", "params"}
    assert shares["rsum"] == saved["meta"]["student_rsum_over_teacher"]
    for direction in ("i2t_r1", "t2i_r1"):
        if saved["teacher"][direction]:
            assert shares[direction] == round(saved["student"][direction] / saved["teacher"][direction], 4)
    md = (out / "report.md").read_text()
    assert (
        "## Other kinds of images (never used in training)" in md and f"student · drawings ({len(tests)} images)" in md
    )
    assert "RSUM on other kinds of images: drawings" in md
    assert (
        "RSUM" in (out / "report.md").read_text() and "**student / teacher**: RSUM" in (out / "report.md").read_text()
    )
    # run again: nothing is recomputed, the scores are the same
    messages = []
    again = run_demo(out, overrides, progress=False, log=messages.append, heldout=heldout)
    assert any("up to date" in m for m in messages) and any("resuming" in m for m in messages)
    assert (
        again["student"]["rsum"] == report["student"]["rsum"] and again["teacher"]["rsum"] == report["teacher"]["rsum"]
    )
    assert again["heldout"] == report["heldout"]  # the teacher's held-out features read back from their file
