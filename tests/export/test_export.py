"""dsmd export: a self-contained folder, a transformers model when exact, ONNX encoders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dsmd
from dsmd.errors import DsmdError
from dsmd.export.writer import export_student
from students import train_tiny

ROOT = Path(__file__).resolve().parents[2]
CAPTIONS = ["a red circle on a blue background", "a green square", "the yellow triangle is on a white backdrop"]


def _images(folder: Path) -> list[str]:
    """Images of other sizes and shapes than the training ones (resizing must match too)."""
    folder.mkdir(exist_ok=True)
    paths = []
    for i, size in enumerate([(40, 32), (31, 57), (96, 96)]):
        img = Image.linear_gradient("L").resize(size).convert("RGB")
        img.putpixel((i, i), (255, 0, 0))
        paths.append(str(folder / f"probe{i}.png"))
        img.save(paths[-1])
    return paths


def test_the_export_is_self_contained_and_matches_the_checkpoint(paper_like, tmp_path):
    moved = shutil.copytree(paper_like["export"], tmp_path / "elsewhere")  # nothing points back
    names = {p.name for p in moved.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "preprocessing.json",
        "tokenizer.json",
        "image_encoder.onnx",
        "text_encoder.onnx",
    } <= names
    meta = json.loads((moved / "config.json").read_text())["dsmd_export"]
    assert meta["blueprint"]["dim"] == 24 and meta["space"] and meta["source"]["sha256"]
    exported, original = dsmd.load_student(moved), dsmd.load_student(paper_like["checkpoint"])
    images = _images(tmp_path)
    got, want = exported.encode_images(images), original.encode_images(images)
    assert got.shape == (3, 24) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(exported.encode_texts(CAPTIONS), original.encode_texts(CAPTIONS), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert exported.space == original.space
    assert any("largest difference from the checkpoint" in m for m in paper_like["messages"])


def test_plain_transformers_loads_it_and_gives_the_same_embeddings(paper_like, tmp_path):
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(str(paper_like["export"])).eval()
    processor = AutoProcessor.from_pretrained(str(paper_like["export"]))
    assert type(model).__name__ == "VisionTextDualEncoderModel"
    images = _images(tmp_path)
    inputs = processor(
        text=CAPTIONS, images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        image = model.get_image_features(pixel_values=inputs["pixel_values"])
        text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    image = getattr(image, "pooler_output", image)
    text = getattr(text, "pooler_output", text)
    student = dsmd.load_student(paper_like["checkpoint"])
    np.testing.assert_allclose(
        torch.nn.functional.normalize(image, dim=-1).numpy(), student.encode_images(images), atol=1e-5
    )
    np.testing.assert_allclose(
        torch.nn.functional.normalize(text, dim=-1).numpy(), student.encode_texts(CAPTIONS), atol=1e-5
    )


def test_the_onnx_files_run_without_torch(paper_like, tmp_path):
    images = _images(tmp_path)
    out = tmp_path / "onnx.npz"
    blocked = (
        "import sys; sys.modules['torch'] = None; import runpy; sys.argv = sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            blocked,
            str(ROOT / "examples" / "onnx_encode.py"),
            str(paper_like["export"]),
            "--images",
            *images,
            "--texts",
            *CAPTIONS,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    student = dsmd.load_student(paper_like["checkpoint"])
    with np.load(out) as onnx:
        np.testing.assert_allclose(onnx["images"], student.encode_images(images), atol=1e-5)
        np.testing.assert_allclose(onnx["texts"], student.encode_texts(CAPTIONS), atol=1e-5)
    assert any(m.startswith("onnx: largest difference") for m in paper_like["messages"])


def test_a_mean_pooled_student_is_exported_without_the_transformers_copy(tiny_models, synthetic_manifest, tmp_path):
    run = train_tiny(tiny_models, synthetic_manifest, tmp_path)
    messages = []
    export_student(run["checkpoint"], tmp_path / "export", log=messages.append)
    assert any(
        "not written as a transformers VisionTextDualEncoderModel: its text tower mean-pools" in m for m in messages
    )
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    assert set(meta) == {"dsmd_export"} and meta["dsmd_export"]["weights_layout"] == "dsmd"
    got = dsmd.load_student(tmp_path / "export").encode_texts(CAPTIONS)
    np.testing.assert_allclose(got, dsmd.load_student(run["checkpoint"]).encode_texts(CAPTIONS), atol=1e-6)


def test_bad_exports_are_refused(paper_like, tmp_path):
    with pytest.raises(DsmdError, match="already exists.*--overwrite"):
        export_student(paper_like["checkpoint"], paper_like["export"])
    broken = shutil.copytree(paper_like["export"], tmp_path / "broken")
    (broken / "model.safetensors").unlink()
    with pytest.raises(DsmdError, match="not a complete dsmd export: model.safetensors missing"):
        dsmd.load_student(broken)
    (tmp_path / "plain").mkdir()
    with pytest.raises(DsmdError, match="not a dsmd export"):
        dsmd.load_student(tmp_path / "plain")
    with pytest.raises(DsmdError, match="no student at"):
        dsmd.load_student(tmp_path / "nothing")
    with pytest.raises(TypeError, match="list of captions"):
        dsmd.load_student(paper_like["export"]).encode_texts("one string")
