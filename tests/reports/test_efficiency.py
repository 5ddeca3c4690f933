"""``dsmd efficiency``: parameters per tower, latency at batch 1 and 32, throughput and peak memory
of a tiny run's student and teacher (keys and counts only: speed is never asserted)."""

from __future__ import annotations

import json

import pytest
from torch import nn
from transformers import CLIPModel

from dsmd.cli import main
from dsmd.reports.efficiency import format_efficiency, measure_efficiency, teacher_params
from dsmd.teachers.beit3 import BEiT3ForRetrieval
from dsmd.training.checkpoint import load_checkpoint, save_checkpoint, student_from_checkpoint
from students import train_tiny

TOWERS = ("params", "image_params", "text_params", "shared_params")


@pytest.fixture(scope="module")
def run(tiny_models, synthetic_manifest, tmp_path_factory):
    return train_tiny(tiny_models, synthetic_manifest, tmp_path_factory.mktemp("efficiency"))


@pytest.fixture(scope="module")
def result(run):
    return measure_efficiency(run["checkpoint"], repeats=2, warmup=1)


def _cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def _latency_keys(row: dict) -> None:
    for kind in ("image", "text"):
        for b in (1, 32):
            key = f"{kind}_latency_ms_b{b}"
            assert isinstance(row[key], float) and row[key] > 0
            low, high = row[f"{key}_iqr"]
            assert 0 < low <= row[key] <= high
            low, high = row[f"{key}_range"]
            assert 0 < low <= row[key] <= high
        assert row[f"{kind}_latency_ms"] == row[f"{kind}_latency_ms_b32"]
    assert row["images_per_s"] == pytest.approx(1000 / row["image_latency_ms"])
    assert row["captions_per_s"] == pytest.approx(1000 / row["text_latency_ms"])
    assert isinstance(row["peak_memory_mb"], float) and row["peak_memory_mb"] >= 0


def test_student_row_counts_each_tower(run, result):
    student, _, _ = student_from_checkpoint(run["checkpoint"])
    row = result["student"]
    assert all(isinstance(row[k], int) for k in TOWERS)
    assert row["params"] == sum(p.numel() for p in student.parameters())
    assert row["image_params"] == sum(p.numel() for m in (student.vision, student.vision_proj) for p in m.parameters())
    assert row["text_params"] == sum(p.numel() for m in (student.text, student.text_proj) for p in m.parameters())
    assert row["params"] == row["image_params"] + row["text_params"] and row["shared_params"] == 0
    assert row["dtype"] == "float32"
    _latency_keys(row)


def test_teacher_row_splits_clip_into_its_towers(tiny_models, result):
    clip = CLIPModel.from_pretrained(tiny_models["clip"])

    def count(*modules):
        return sum(p.numel() for m in modules for p in m.parameters())

    row = result["teacher"]
    assert row["params"] == count(clip)
    assert row["image_params"] == count(clip.vision_model, clip.visual_projection)
    assert row["text_params"] == count(clip.text_model, clip.text_projection)
    assert row["shared_params"] == 1  # logit_scale
    assert row["params"] == row["image_params"] + row["text_params"] + row["shared_params"]
    _latency_keys(row)


def test_result_is_json_and_a_table(result):
    again = json.loads(json.dumps(result))
    assert again["device"] == "cpu" and again["batch_sizes"] == [1, 32] and again["latency_batch"] == 32
    assert again["repeats"] == 2 and again["split"] == "test" and again["images"] == 6 and again["captions"] == 12
    assert any("approximate" in n for n in again["notes"]) and again["timing"].startswith("interleaved")
    table = format_efficiency(result)
    assert "student and teacher timed in turn" in table
    assert "| | teacher | student | student/teacher |" in table
    for label in (
        "| parameters |",
        "| image latency, batch 1 ",
        "| caption latency, batch 32 ",
        "| peak memory (MiB) |",
    ):
        assert label in table
    ratio = result["student"]["params"] / result["teacher"]["params"]
    assert f"| parameters | {result['teacher']['params']:,} | {result['student']['params']:,} | {ratio:#.3g} |" in table


def test_cli_json_and_table(run, capsys):
    code, out, err = _cli(["efficiency", "--checkpoint", str(run["checkpoint"]), "--json", "--repeats", "2"], capsys)
    assert code == 0, err
    parsed = json.loads(out)
    for who in ("student", "teacher"):
        assert {"params", "image_params", "text_params", "image_latency_ms", "text_latency_ms"} <= set(parsed[who])
    code, out, err = _cli(["efficiency", "--checkpoint", str(run["checkpoint"]), "--repeats", "1"], capsys)
    assert code == 0, err
    assert "| parameters |" in out and "student: " in out and "teacher: hf_clip " in out


def test_imported_teacher_has_no_teacher_row(run, tmp_path):
    state = load_checkpoint(run["checkpoint"])
    state["config"]["teacher"]["kind"] = "imported"
    save_checkpoint(tmp_path / "imported.pt", state)
    result = measure_efficiency(tmp_path / "imported.pt", repeats=1, warmup=0)
    assert result["teacher"] is None and result["student"]["params"] > 0
    assert any("imported" in n for n in result["notes"])
    table = format_efficiency(result)
    assert "| parameters | n/a |" in table and "note: the run's teacher is imported" in table


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--checkpoint", "/nonexistent/best.pt"], "checkpoint not found"),
        (["--checkpoint", "BAD", "--json"], "cannot read checkpoint"),
        (["--checkpoint", "BAD", "--repeats", "0"], "--repeats must be at least 1"),
    ],
)
def test_bad_input_is_one_line(argv, fragment, tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    argv = [str(tmp_path / "bad.pt") if a == "BAD" else a for a in argv]
    code, out, err = _cli(["efficiency", *argv], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsmd: error: ") and fragment in lines[0], err


class _Stub(nn.Module):
    """A teacher's parameter layout without the rest of a teacher."""

    def __init__(self, kind: str, model: nn.Module):
        super().__init__()
        self.kind = kind
        self.model = model

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def test_beit3_splits_by_multiway_branch():
    from beit3_fixtures import TINY_BEIT3

    model = BEiT3ForRetrieval(TINY_BEIT3)
    row = teacher_params(_Stub("beit3", model))
    image = sum(
        p.numel() for n, p in model.named_parameters() if ".A." in n or n.startswith(("beit3.vision", "vision"))
    )
    text = sum(p.numel() for n, p in model.named_parameters() if ".B." in n or n.startswith(("beit3.text", "language")))
    assert row == {"params": image + text + 1, "image_params": image, "text_params": text, "shared_params": 1}


def test_an_unknown_layout_is_not_guessed():
    stub = _Stub("hf_clip", nn.ModuleDict({"fusion": nn.Linear(4, 4), "text_model": nn.Linear(4, 4)}))
    assert teacher_params(stub) == {"params": 40, "image_params": None, "text_params": None, "shared_params": None}


def test_offline_splits_into_its_two_models():
    class Offline(nn.Module):
        kind = "offline"

        def __init__(self):
            super().__init__()
            self.image_model, self.text_model = nn.Linear(3, 5), nn.Linear(4, 4)
            self.register_buffer("prompt_embeddings", nn.Linear(1000, 4).weight.detach())

        def num_parameters(self) -> int:
            return sum(p.numel() for p in self.parameters())

    assert teacher_params(Offline()) == {"params": 40, "image_params": 20, "text_params": 20, "shared_params": 0}


def test_dsmd_report_adds_the_efficiency_table_and_the_feature_spaces(run, capsys):
    folder = run["checkpoint"].parent.parent
    code, out, err = _cli(["report", "--quiet", str(folder)], capsys)
    assert code == 0, err
    report = (folder / "report.md").read_text()
    assert "## Efficiency (best checkpoint)" in report and "| parameters |" in report
    assert "![feature_space](plots/feature_space.png)" in report
    assert (folder / "plots" / "feature_space.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((folder / "efficiency.json").read_text())
    student, _, _ = student_from_checkpoint(run["checkpoint"])
    assert saved["student"]["params"] == sum(p.numel() for p in student.parameters())
