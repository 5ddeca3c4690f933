"""benchmarks/compression_curve.py: which runs it trains, resumes, scores or reads back."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compression_curve.py"


@pytest.fixture
def curve(monkeypatch):
    """The script with its ``dsmd`` calls recorded instead of run (eval answers an RSUM of 42)."""
    spec = importlib.util.spec_from_file_location("compression_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls = []

    def fake_dsmd(*args):
        calls.append(args)
        if args[0] == "train":  # dsmd train makes its out_dir
            Path(next(a for a in args if a.startswith("out_dir="))[8:]).mkdir(parents=True, exist_ok=True)
        return json.dumps({"rsum": 42.0}) if args[0] == "eval" else ""

    monkeypatch.setattr(module, "_dsmd", fake_dsmd)
    monkeypatch.setattr(module, "_teacher_rsum", lambda: 70.0)
    module.calls = calls
    return module


def _commands(calls):
    return [c[0] + (" --resume" if "--resume" in c else "") for c in calls]


def test_a_new_run_is_trained_with_its_seed_then_scored(curve, tmp_path):
    result = curve._train_seed(["student.image_size=96"], tmp_path / "seed1", epochs=6, seed=1)
    assert _commands(curve.calls) == ["train", "eval"]
    train = curve.calls[0]
    assert f"out_dir={tmp_path / 'seed1'}" in train and "train.seed=1" in train
    assert "student.image_size=96" in train and "train.lr_decay_epochs=[4]" in train
    assert result == json.loads((tmp_path / "seed1" / "curve_seed.json").read_text())
    assert (result["seed"], result["rsum"], result["teacher_rsum"]) == (1, 42.0, 70.0)


def test_a_scored_run_is_read_back(curve, tmp_path):
    folder = tmp_path / "seed0"
    folder.mkdir()
    (folder / "curve_seed.json").write_text(json.dumps({"seed": 0, "rsum": 7.0}))
    assert curve._train_seed([], folder, epochs=6, seed=0)["rsum"] == 7.0
    legacy = tmp_path / "old"  # older versions wrote the score over dsmd train's result.json
    legacy.mkdir()
    (legacy / "result.json").write_text(json.dumps({"seed": 0, "rsum": 8.0}))
    assert curve._train_seed([], legacy, epochs=6, seed=0)["rsum"] == 8.0
    assert curve.calls == []


def test_an_interrupted_run_resumes_and_a_trained_one_is_only_scored(curve, tmp_path):
    interrupted = tmp_path / "seed0"
    (interrupted / "checkpoints").mkdir(parents=True)
    (interrupted / "checkpoints" / "last.pt").write_bytes(b"")
    curve._train_seed([], interrupted, epochs=6, seed=0)
    assert _commands(curve.calls) == ["train --resume", "eval"]
    assert curve.calls[0][-1] == f"out_dir={interrupted}"
    curve.calls.clear()
    trained = tmp_path / "seed2"  # training finished (its result.json), the score was not written
    (trained / "checkpoints").mkdir(parents=True)
    (trained / "checkpoints" / "last.pt").write_bytes(b"")
    (trained / "result.json").write_text(json.dumps({"best_epoch": 6, "steps": 186}))
    assert curve._train_seed([], trained, epochs=6, seed=2)["rsum"] == 42.0
    assert _commands(curve.calls) == ["eval"]


def test_the_efficiency_row_is_the_median_of_its_rounds_and_is_kept(curve, tmp_path, monkeypatch):
    shares = iter([0.3, 0.1, 0.2])
    monkeypatch.setattr(curve, "_measure_once", lambda ck, repeats: {"latency_share": next(shares), "params": 5})
    row = curve._efficiency(tmp_path / "best.pt", tmp_path, repeats=10, rounds=3)
    assert row["latency_share"] == 0.2 and row["latency_shares"] == [0.1, 0.2, 0.3]
    assert curve._share_cell(row) == "20.0 (10.0-30.0)"
    monkeypatch.setattr(curve, "_measure_once", lambda ck, repeats: pytest.fail("measured again"))
    assert curve._efficiency(tmp_path / "best.pt", tmp_path, repeats=10, rounds=3) == row


def test_the_record_keeps_the_study_and_the_curve_needs_no_run_folder(curve, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    measured = {
        "checkpoint": "c.pt",
        "params": 5,
        "image_latency_ms": 1.0,
        "text_latency_ms": 0.5,
        "latency_share": 0.1,
    }
    monkeypatch.setattr(curve, "_efficiency", lambda *a: dict(measured))
    row = curve._student("S: a student", ["student.image_size=64"], out, 6, [0, 1], repeats=1, rounds=1)
    assert _commands(curve.calls) == ["train", "eval", "train", "eval"] and row["rsums"] == [42.0, 42.0]
    lines = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["student"], r.get("seed")) for r in lines] == [
        ("efficiency", "S", None),
        ("seed", "S", 0),
        ("seed", "S", 1),
    ]
    import shutil

    shutil.rmtree(out)  # a fresh clone: the record only
    curve.calls.clear()
    monkeypatch.setattr(curve, "_efficiency", lambda *a: pytest.fail("measured again"))
    assert curve._student("S: a student", ["student.image_size=64"], out, 6, [0, 1], repeats=1, rounds=1) == row
    assert curve.calls == []
