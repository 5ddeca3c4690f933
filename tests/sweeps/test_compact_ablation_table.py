"""benchmarks/compact_ablation_table.py: the ablation's printed lines into mean ± std and shares,
each run against the teacher on its own split."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compact_ablation_table.py"


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("compact_ablation_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _m(rsum, i2t=10.0, t2i=20.0):
    return json.dumps({"rsum": rsum, "i2t_r1": i2t, "t2i_r1": t2i})


def test_runs_are_compared_with_the_teacher_of_their_own_split(table):
    lines = [
        f"teacher test {_m(400.0, 40.0, 50.0)}",
        f"teacher/1 test {_m(200.0, 20.0, 25.0)}",
        f"teacher emoji {_m(80.0)}",
        "extract noise that is not a result",
        f"row@0 test {_m(380.0, 30.0, 40.0)}",
        f"row@1 test {_m(420.0, 50.0, 60.0)}",
        f"row@0/1 test {_m(210.0, 20.0, 20.0)}",
        f"row@0 emoji {_m(72.0)}",
        f"row@0/1 emoji {_m(76.0)}",
        "row@0 params 6780000",
    ]
    teacher, runs = table.parse(lines)
    summary = table.summarise(teacher, runs)["row"]
    assert summary["runs"] == ["0/0", "0/1", "1/0"]
    test = summary["test"]
    assert test["n"] == 3 and test["rsum"][0] == pytest.approx(1010 / 3)
    assert test["rsum_share"] == pytest.approx((380 / 400 + 420 / 400 + 210 / 200) / 3)
    assert test["t2i_r1_share"] == pytest.approx((40 / 50 + 60 / 50 + 20 / 25) / 3)
    assert summary["emoji"]["rsum_share"] == pytest.approx((72 / 80 + 76 / 80) / 2)  # the same images on every split
    assert "val" not in summary
    md = table.markdown({"row": summary})
    assert "| `row` | 3 | " in md and "336.7 ± 111.5 (102%)" in md and "74.0 ± 2.8 (92%)" in md


def test_a_run_without_its_teachers_figures_has_no_share(table):
    teacher, runs = table.parse([f"row@0/2 test {_m(300.0)}"])
    assert table.summarise(teacher, runs)["row"]["test"]["rsum_share"] is None
