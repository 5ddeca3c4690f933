"""dsmd sweep on a tiny grid: the table against the runs' own results, resuming, a failed run,
a bad key refused before anything runs, and every shipped sweep file checked."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import yaml

from dsmd.cli import main, run
from dsmd.errors import DsmdError
from dsmd.sweeps import load_sweep, print_commands, run_sweep, write_table
from dsmd.sweeps.records import read_records, record_path, write_records
from dsmd.sweeps.spec import SWEEP_DIR
from tiny_runs import write_base_config

pytestmark = pytest.mark.e2e


def _write(tmp_path: Path, tiny_overrides: list[str], body: dict) -> Path:
    """A base config of the tiny run (1 epoch) and a sweep file over it."""
    write_base_config(tmp_path / "base.yaml", [*tiny_overrides, "train.epochs=1"])
    sweep = {"base": str(tmp_path / "base.yaml"), "out_dir": str(tmp_path / "sweep"), **body}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_a_tiny_grid_gives_the_runs_means_and_resumes(tiny_overrides, tmp_path, capsys):
    path = _write(tmp_path, tiny_overrides, {"seeds": [0, 1], "grid": {"loss.margin": [0.0, 0.2]}})
    sweep = load_sweep(path)
    assert len(sweep.runs) == 4 and len({r.folder for r in sweep.runs}) == 4
    messages = []
    assert run_sweep(sweep, jobs=2, log=messages.append) == []
    table = write_table(sweep)
    for row in table["rows"]:
        runs = [r for r in sweep.runs if r.variant == row["name"]]
        rsum = [json.loads((r.folder / "test.json").read_text())["rsum"] for r in runs]
        assert row["n"] == 2 and row["rsum_values"] == rsum
        assert row["rsum_mean"] == pytest.approx(statistics.fmean(rsum))
        assert row["rsum_std"] == pytest.approx(statistics.stdev(rsum))
        assert row["overrides"] == [f"loss.margin={row['name'].split('=')[1]}"]
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert saved["rows"] == table["rows"] and saved["failed"] == []
    assert (tmp_path / "sweep" / "sweep.csv").read_text().startswith("name,overrides,n,seeds,i2t_r1_mean")
    assert "± " in (tmp_path / "sweep" / "sweep.md").read_text()
    assert (tmp_path / "sweep" / "sweep_loss_margin.png").stat().st_size > 1000
    # run again: everything is finished, nothing runs
    stamps = {r.folder: (r.folder / "test.json").stat().st_mtime_ns for r in sweep.runs}
    messages.clear()
    assert run_sweep(load_sweep(path), jobs=2, log=messages.append) == []
    assert "4 distinct runs, 4 finished before, 0 to run" in messages[-1]
    assert {r.folder: (r.folder / "test.json").stat().st_mtime_ns for r in sweep.runs} == stamps
    # the study's record: one line per run, enough to rebuild the table without any run folder
    records = read_records(record_path(sweep.runs_dir))
    assert sorted(records) == sorted(r.folder.name for r in sweep.runs)
    for r in sweep.runs:
        record = records[r.folder.name]
        assert record["test"] == json.loads((r.folder / "test.json").read_text())
        assert record["validation"] and record["result"]["best_val_rsum"] == max(
            v["val_rsum"] for v in record["validation"]
        )
        assert record["config"]["loss"]["margin"] == r.cfg.loss.margin
    shutil.rmtree(sweep.runs[1].folder)  # a fresh clone holds no run folders
    assert write_table(load_sweep(path))["rows"] == table["rows"]
    messages.clear()
    assert run_sweep(load_sweep(path), jobs=2, log=messages.append) == []
    assert "4 distinct runs, 4 finished before, 0 to run" in messages[-1]
    # --print-commands: torchrun lines for unfinished runs (the record line removed: to be run again)
    del records[sweep.runs[0].folder.name]
    write_records(record_path(sweep.runs_dir), records)
    (sweep.runs[0].folder / "test.json").unlink()
    lines = print_commands(load_sweep(path))
    assert len(lines) == 2 and lines[0].startswith("python -m dsmd extract --config ")
    assert lines[1].startswith("torchrun --standalone --nproc_per_node 1 -m dsmd train")


def test_two_sweeps_run_as_one_pool_and_share_runs(tiny_overrides, tmp_path, capsys):
    first = _write(
        tmp_path, tiny_overrides, {"seeds": [0], "grid": {"loss.margin": [0.0, 0.2]}, "runs": str(tmp_path / "shared")}
    )
    second = tmp_path / "second.yaml"
    body = yaml.safe_load(first.read_text())
    body.pop("grid")
    body.update(out_dir=str(tmp_path / "second"), variants={"no margin": ["loss.margin=0.0"]})
    second.write_text(yaml.safe_dump(body))
    assert run(["sweep", "--quiet", str(first), str(second), "train.lr=2e-4"]) == 0
    out = capsys.readouterr().out
    assert "2 distinct runs, 0 finished before, 2 to run" in out and "2 sweep(s) in" in out
    one = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]
    two = json.loads((tmp_path / "second" / "sweep.json").read_text())["rows"]
    assert two[0]["rsum_values"] == next(r for r in one if r["name"] == "loss.margin=0.0")["rsum_values"]
    requests = [yaml.safe_load(p.read_text()) for p in (tmp_path / "shared").glob("*/request.yaml")]
    assert len(requests) == 2 and all(r["train"]["lr"] == 2e-4 for r in requests)


def test_a_failed_run_is_named_and_the_others_finish(tiny_overrides, tmp_path, capsys):
    path = _write(
        tmp_path, tiny_overrides, {"seeds": [0], "variants": {"fine": [], "broken": ["student.text_layers=5"]}}
    )
    with pytest.raises(SystemExit) as info:
        main(["sweep", "--quiet", str(path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "1 of 2 runs failed: broken (seed 0)" in err
    table = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    rows = {row["name"]: row for row in table["rows"]}
    assert rows["fine"]["n"] == 1 and rows["broken"]["n"] == 0 and table["failed"][0]["name"] == "broken"
    error = (Path(table["failed"][0]["folder"]) / "error.txt").read_text()
    assert "student.text_layers=5: the text model has 2 layers" in error


def test_a_bad_key_is_refused_before_anything_runs(tiny_overrides, tmp_path):
    path = _write(tmp_path, tiny_overrides, {"grid": {"loss.temprature": [0.1, 0.2]}})
    with pytest.raises(DsmdError, match="variant 'loss.temprature=0.1': unknown config key 'loss.temprature'"):
        load_sweep(path)
    path = _write(tmp_path, tiny_overrides, {"variants": {"bad": ["balancer.mode=dynmic"]}})
    with pytest.raises(DsmdError, match="variant 'bad': config key 'balancer.mode': 'dynmic' is not allowed"):
        load_sweep(path)
    assert not (tmp_path / "sweep").exists()
    path.write_text(yaml.safe_dump({"base": "demo", "grid": {"loss.margin": [0.1]}, "variants": {"a": []}}))
    with pytest.raises(DsmdError, match="either grid: .* or variants:"):
        load_sweep(path)


@pytest.mark.parametrize("name", sorted(p.stem for p in SWEEP_DIR.glob("*.yaml")))
def test_every_shipped_sweep_file_is_valid(name):
    sweep = load_sweep(name)
    assert sweep.runs and len(sweep.seeds) >= 3 and sweep.description


def test_the_papers_tables_ship_for_both_settings():
    names = {p.stem for p in SWEEP_DIR.glob("*.yaml")}
    for table in (2, 4, 5, 6, 7, 8, 9, 10):
        assert any(n.startswith(f"offline_table{table}_") for n in names), table
        assert any(n.startswith(f"paper_f30k_table{table}_") for n in names), table
