"""report.json for programs, report.md for people."""

from __future__ import annotations

import json

import pytest

from dsmd.reports import format_shares, format_table, student_shares, write_report

ROWS = {
    "teacher": {"i2t_r1": 39.53, "rsum": 376.74, "params": 27_365_224, "image_latency_ms": 17.149},
    "student": {"i2t_r1": 51.16, "rsum": 397.67, "params": 22_426_216, "image_latency_ms": None},
}


def test_table_has_readable_headers_and_formatted_values():
    lines = format_table(ROWS).splitlines()
    assert lines[0] == "| model | i2t R@1 | RSUM | params | ms / image |"
    assert lines[2] == "| teacher | 39.5 | 376.7 | 27.37M | 17.15 |"
    assert lines[3] == "| student | 51.2 | 397.7 | 22.43M | - |"


def test_report_files_hold_the_rows_and_explain_the_columns(tmp_path):
    meta = {"split": "test (43 images, 43 captions)", "seconds": {"extract": 12.5, "train": 200.0}}
    json_path, md_path = write_report(tmp_path, ROWS, meta)
    assert json.loads(json_path.read_text()) == {**ROWS, "meta": meta}
    md = md_path.read_text()
    assert format_table(ROWS) in md and "image→text" in md and "percentages" in md
    assert "- **seconds**: extract: 12.5, train: 200" in md
    assert "{" not in md and "[" not in md  # no raw Python structures
    assert not list(tmp_path.glob("*.tmp"))


def test_shares_of_the_teacher_and_their_line_under_the_table(tmp_path):
    teacher = {"rsum": 400.0, "params": 20_000_000, "image_latency_ms": 18.0, "text_latency_ms": 2.0}
    student = {"rsum": 380.0, "params": 4_000_000, "image_latency_ms": 1.5, "text_latency_ms": 0.5}
    shares = student_shares(student, teacher)
    assert shares == {"rsum": 0.95, "latency": 0.1, "params": 0.2}  # latency: (1.5 + 0.5) / (18 + 2)
    line = format_shares(shares)
    assert line == (
        "**student / teacher**: RSUM 95.0%, latency 10.0% (ms per image + ms per caption), parameters 20.0%"
    )
    _, md_path = write_report(tmp_path, ROWS, summary=line)
    md = md_path.read_text()
    assert md.index(format_table(ROWS)) < md.index(line) < md.index("image→text")


def test_shares_give_r_at_1_in_each_direction_and_the_held_out_kinds():
    teacher = {
        "rsum": 400.0,
        "i2t_r1": 40.0,
        "t2i_r1": 50.0,
        "params": 10,
        "image_latency_ms": 9.0,
        "text_latency_ms": 1.0,
    }
    student = {
        "rsum": 380.0,
        "i2t_r1": 30.0,
        "t2i_r1": 45.0,
        "params": 2,
        "image_latency_ms": 0.9,
        "text_latency_ms": 0.1,
    }
    shares = student_shares(student, teacher)
    assert shares == pytest.approx({"rsum": 0.95, "i2t_r1": 0.75, "t2i_r1": 0.9, "latency": 0.1, "params": 0.2})
    line = format_shares(shares, {"emoji": 0.681, "clip art": 0.9})
    assert line == (
        "**student / teacher**: RSUM 95.0% (R@1 i2t 75.0%, t2i 90.0%), latency 10.0% (ms per image + ms per "
        "caption), parameters 20.0%; RSUM on other kinds of images: emoji 68.1%, clip art 90.0%"
    )


def test_extra_tables_go_under_the_summary_and_extra_keys_into_the_json(tmp_path):
    other = {"teacher · emoji (3 images)": ROWS["teacher"], "student · emoji (3 images)": ROWS["student"]}
    json_path, md_path = write_report(
        tmp_path, ROWS, summary="the line", tables={"Other kinds": other}, extra={"heldout": {"emoji": 1}}
    )
    assert json.loads(json_path.read_text()) == {**ROWS, "heldout": {"emoji": 1}}
    md = md_path.read_text()
    assert md.index("the line") < md.index("## Other kinds") < md.index(format_table(other)) < md.index("image→text")
