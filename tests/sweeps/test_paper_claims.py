"""benchmarks/paper_claims.py: the paired differences and verdicts behind docs/results.md."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "paper_claims.py"


@pytest.fixture(scope="module")
def claims():
    spec = importlib.util.spec_from_file_location("paper_claims", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(name, values, seeds=(0, 1, 2)):
    return {"name": name, "n": len(values), "seeds": list(seeds), "rsum_values": values,
            "rsum_mean": sum(values) / len(values), "rsum_std": 0.0}  # fmt: skip


def test_paired_difference_and_its_standard_error(claims):
    test = claims.paired(_row("a", [10.0, 12.0, 14.0]), _row("b", [9.0, 10.0, 11.0]))
    # differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3)
    assert test["n"] == 3 and test["diff_mean"] == pytest.approx(2.0)
    assert test["diff_se"] == pytest.approx(1 / 3**0.5) and test["t"] == pytest.approx(2 * 3**0.5)


def test_only_the_seeds_both_finished_are_paired(claims):
    test = claims.paired(_row("a", [10.0, 12.0, 14.0]), _row("b", [11.0, 20.0], seeds=(0, 1)))
    assert test["n"] == 2 and test["diff_mean"] == pytest.approx((-1.0 - 8.0) / 2)


@pytest.mark.parametrize(
    ("default", "other", "paper_diff", "expected"),
    [
        ([30.0, 32.0, 34.0], [20.0, 22.5, 23.0], 80.0, "holds"),
        ([30.0, 32.0, 34.0], [20.0, 22.5, 23.0], -5.0, "opposite"),
        ([30.0, 32.0, 34.0], [29.0, 33.0, 33.5], 5.0, "cannot tell"),
        ([30.0, 32.0, 34.0], [20.0, 22.5, 23.0], None, "differs"),
        ([30.0, 32.0, 34.0], [30.0, 32.0, 34.0], 3.8, "identical runs"),
        ([30.0], [20.0], 5.0, "not enough seeds"),
    ],
)
def test_verdicts(claims, default, other, paper_diff, expected):
    seeds = tuple(range(len(default)))
    test = claims.paired(_row("a", default, seeds), _row("b", other, seeds))
    assert claims.verdict(paper_diff, test) == expected


def test_claims_read_the_sweeps_and_mark_missing_tables(claims, tmp_path):
    folder = tmp_path / "table5_balancer"
    folder.mkdir()
    rows = [
        _row("dynamic balancer", [32.0, 30.0, 33.0]),
        _row("static weights, all 1 (no balancer)", [22.0, 23.0, 22.5]),
    ]
    (folder / "sweep.json").write_text(json.dumps({"rows": rows}))
    tables = {t["table"]: t for t in claims.claims(tmp_path)}
    assert tables["table6_l2"]["missing"]
    entry = tables["table5_balancer"]["rows"][1]
    assert entry["paper_diff"] == pytest.approx(528.8 - 448.1) and entry["verdict"] == "holds"
    assert "| static weights, all 1 (no balancer) | 448.1 |" in claims.markdown(list(tables.values()))
