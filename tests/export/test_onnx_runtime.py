"""ONNX Runtime as the student's runtime: the export's ONNX files give PyTorch's features."""

from __future__ import annotations

import numpy as np
import pytest
from test_export import CAPTIONS, _images

import dsmd
from dsmd.errors import DsmdError
from dsmd.inference.onnx_runtime import resolve_runtime


def test_the_onnx_runtime_gives_the_pytorch_features(paper_like, tmp_path):
    images = _images(tmp_path)
    eager = dsmd.load_student(paper_like["export"])
    onnx = dsmd.load_student(paper_like["export"], runtime="onnx", threads=1)
    assert (eager.info["runtime"], onnx.info["runtime"]) == ("torch", "onnx")
    assert (onnx.dim, onnx.space, onnx.model_id) == (eager.dim, eager.space, eager.model_id)
    np.testing.assert_allclose(onnx.encode_images(images), eager.encode_images(images), atol=1e-5)
    np.testing.assert_allclose(onnx.encode_texts(CAPTIONS), eager.encode_texts(CAPTIONS), atol=1e-5)
    assert dsmd.load_student(paper_like["export"], runtime="auto").info["runtime"] == "onnx"


def test_a_runtime_the_student_cannot_run_is_one_line(paper_like, tmp_path):
    with pytest.raises(DsmdError, match=r"is a checkpoint. Export it first: `dsmd export --checkpoint"):
        dsmd.load_student(paper_like["checkpoint"], runtime="onnx")
    with pytest.raises(DsmdError, match=r"has no INT8 encoders: export with `dsmd export --int8`"):
        dsmd.load_student(paper_like["export"], runtime="int8")
    with pytest.raises(DsmdError, match=r"has no ONNX encoders: export with `dsmd export --onnx`"):
        resolve_runtime(tmp_path, {}, "onnx")
    with pytest.raises(DsmdError, match=r"runtime 'tensorrt': choose one of torch, onnx, int8, auto"):
        resolve_runtime(tmp_path, {}, "tensorrt")
    assert resolve_runtime(tmp_path, {}, "auto") == "torch"


@pytest.fixture(scope="module")
def int8_export(paper_like, tmp_path_factory):
    from dsmd.export.writer import export_student

    out = tmp_path_factory.mktemp("int8") / "export"
    messages = []
    export_student(paper_like["checkpoint"], out, int8=True, log=messages.append)
    return {"export": out, "messages": messages}


def test_the_int8_export_records_its_gate_and_runs_what_passed(int8_export, tmp_path):
    import json

    from dsmd.export.quantize import LIMITS

    folder = int8_export["export"]
    record = json.loads((folder / "config.json").read_text())["dsmd_export"]["int8"]
    images = _images(tmp_path)
    eager = dsmd.load_student(folder)
    int8 = dsmd.load_student(folder, runtime="int8", threads=1)
    assert int8.info["runtime"] == "int8" and dsmd.load_student(folder, runtime="auto").info["runtime"] == "int8"
    for tower, got, want in (
        ("image", int8.encode_images(images), eager.encode_images(images)),
        ("text", int8.encode_texts(CAPTIONS), eager.encode_texts(CAPTIONS)),
    ):
        about = record[tower]
        passed = about["mean_cosine"] >= LIMITS["mean_cosine"] and about["min_cosine"] >= LIMITS["min_cosine"]
        passed = passed and about["val_rsum_drop_percent"] <= LIMITS["rsum_drop_percent"]
        assert about["passed"] == passed and (folder / f"{tower}_encoder.int8.onnx").is_file() == passed
        assert about["file"] == (f"{tower}_encoder.int8.onnx" if passed else f"{tower}_encoder.onnx")
        said = [m for m in int8_export["messages"] if m.startswith(f"int8 {tower} encoder")]
        assert len(said) == 1 and ("kept in float32" in said[0]) != passed
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() > (0.5 if passed else 1 - 1e-5), (tower, cos)  # a kept float tower is exact
    assert record["image"]["float_nodes"]["input"] >= 1 and record["image"]["float_nodes"]["head"] >= 1


def test_index_and_search_run_on_the_runtime_asked_for(int8_export, tmp_path, capsys):
    import json

    from dsmd.cli import main

    (tmp_path / "captions.txt").write_text("".join(c + "\n" for c in CAPTIONS))
    export, out = str(int8_export["export"]), str(tmp_path / "index")
    with pytest.raises(SystemExit) as done:
        main(
            [
                "index",
                "--quiet",
                "--model",
                export,
                "--runtime",
                "int8",
                "--texts",
                str(tmp_path / "captions.txt"),
                "--out",
                out,
            ]
        )
    assert done.value.code in (0, None)
    found = {}
    for runtime in ("torch", "onnx", "int8"):
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main(["search", "--index", out, "--text", CAPTIONS[1], "-k", "3", "--json", "--runtime", runtime])
        found[runtime] = {hit["id"]: hit["score"] for hit in json.loads(capsys.readouterr().out)["results"]}
    assert len(found["int8"]) == 3  # (the tiny student's captions score nearly alike: no ranking to compare)
    assert found["onnx"].keys() == found["torch"].keys()
    assert all(found["onnx"][i] == pytest.approx(score, abs=1e-5) for i, score in found["torch"].items())


def test_eval_scores_an_export_in_its_runtime_on_the_checkpoints_data(paper_like, int8_export, tmp_path):
    from dsmd.scoring import score_checkpoint

    checkpoint, export = paper_like["checkpoint"], int8_export["export"]
    eager, _ = score_checkpoint(checkpoint, "val")
    for runtime in ("torch", "onnx"):
        got, about = score_checkpoint(checkpoint, "val", export=export, runtime=runtime)
        assert got == pytest.approx(eager, abs=1e-6) and about["model"] == f"{export} ({runtime})"
    assert score_checkpoint(checkpoint, "val", export=export, runtime="int8")[0].keys() == eager.keys()
    from dsmd.training.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(checkpoint)
    save_checkpoint(tmp_path / "other.pt", {**state, "step": state["step"] + 1})  # another checkpoint
    with pytest.raises(DsmdError, match="was not exported from"):
        score_checkpoint(tmp_path / "other.pt", "val", export=export, runtime="onnx")
    with pytest.raises(DsmdError, match="give --export DIR"):
        score_checkpoint(checkpoint, "val", runtime="onnx")


def test_the_command_line_offers_the_runtimes_the_library_has():
    from dsmd.cli_parser import RUNTIME_CHOICES
    from dsmd.inference.onnx_runtime import RUNTIMES

    assert RUNTIME_CHOICES == RUNTIMES
