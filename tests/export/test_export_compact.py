"""A compact student (factorised word embeddings and ImageNet head, fewer positions, no text layer) through the
whole pipeline: training, export with ONNX, loading, resuming, asymmetric evaluation; and which
compact students the transformers copy can hold."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import dsmd
from dsmd.config import StudentConfig, load_config
from dsmd.export.hf_dual_encoder import build_dual_encoder, dual_encoder_problem
from dsmd.export.writer import export_student
from dsmd.inference.exported import IMAGE_ONNX, TEXT_ONNX
from dsmd.models import build_student
from dsmd.scoring import score_checkpoint
from dsmd.training import train
from dsmd.training.checkpoint import load_checkpoint, student_from_checkpoint
from students import train_tiny

CAPTIONS = ["a red circle on a blue background", "a green square", "the yellow triangle is on a white backdrop"]
COMPACT = [
    "student.vision=efficientnet_lite0",
    "student.vision_head=imagenet_probs",
    "student.vision_head_rank=16",
    "student.text_embedding_rank=8",
    "student.text_positions=16",
    "student.text_pooling=cls",
    "student.text_layers=0",
]


@pytest.fixture(scope="module")
def compact_run(tiny_models, synthetic_manifest, tmp_path_factory):
    run = train_tiny(tiny_models, synthetic_manifest, tmp_path_factory.mktemp("compact"), *COMPACT)
    messages: list[str] = []
    export_student(run["checkpoint"], run["root"] / "export", onnx=True, log=messages.append)
    return {**run, "export": run["root"] / "export", "messages": messages}


@pytest.mark.e2e  # a whole run of an EfficientNet student, exported with ONNX
def test_the_export_holds_the_compact_student_and_its_onnx_files_match_pytorch(compact_run):
    import onnxruntime as ort

    folder = compact_run["export"]
    meta = json.loads((folder / "config.json").read_text())["dsmd_export"]
    assert meta["weights_layout"] == "dsmd"
    assert meta["blueprint"]["text"]["embedding_rank"] == 8 and meta["blueprint"]["vision"]["head_rank"] == 16
    assert any("not written as a transformers VisionTextDualEncoderModel" in m for m in compact_run["messages"])
    student, _, _ = student_from_checkpoint(compact_run["checkpoint"])
    assert "vision.classifier.down.weight" in student.state_dict()
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = student.tokenize(CAPTIONS)
    with torch.no_grad():
        want_image, want_text = student.encode_images(pixels), student.encode_texts(**tokens)
    image = ort.InferenceSession(str(folder / IMAGE_ONNX), providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(folder / TEXT_ONNX), providers=["CPUExecutionProvider"])
    (got_image,) = image.run(["features"], {"pixel_values": pixels.numpy()})
    feeds = {"input_ids": tokens["input_ids"].numpy(), "attention_mask": tokens["attention_mask"].numpy()}
    (got_text,) = text.run(["features"], feeds)
    np.testing.assert_allclose(got_image, want_image.numpy(), atol=1e-5)
    np.testing.assert_allclose(got_text, want_text.numpy(), atol=1e-5)
    exported, original = dsmd.load_student(folder), dsmd.load_student(compact_run["checkpoint"])
    np.testing.assert_allclose(exported.encode_texts(CAPTIONS), original.encode_texts(CAPTIONS), atol=1e-6)


@pytest.mark.e2e  # a whole run of an EfficientNet student, exported with ONNX
def test_a_compact_run_resumes_and_scores_against_the_teachers_gallery(compact_run):
    cfg = load_config(None, compact_run["overrides"])
    train(cfg, resume=True, resume_overrides=["train.epochs=2"], progress=False, log=lambda *_: None)
    state = load_checkpoint(compact_run["root"] / "run" / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and state["config"]["student"]["text_embedding_rank"] == 8
    assert state["model"]["text.model.embeddings.word_embeddings.table.weight"].shape[1] == 8
    metrics, about = score_checkpoint(compact_run["checkpoint"], "test", gallery="teacher")
    assert 0 <= metrics["rsum"] <= 600 and "teacher" in about["gallery"]


def test_fewer_positions_still_make_a_transformers_copy_but_factorised_embeddings_do_not(tiny_models):
    from transformers import VisionTextDualEncoderModel

    base = dict(
        vision=tiny_models["vit"], text=tiny_models["bert"], image_size=32, max_text_length=16, text_pooling="cls"
    )
    student = build_student(StudentConfig(**base, text_positions=16), dim=24).eval()
    assert dual_encoder_problem(student) is None
    model = build_dual_encoder(student)
    assert model.config.text_config.max_position_embeddings == 16
    tokens = student.tokenize(CAPTIONS)
    with torch.no_grad():
        text = model.get_text_features(**tokens)
        text = torch.nn.functional.normalize(getattr(text, "pooler_output", text), dim=-1)
        torch.testing.assert_close(text, student.encode_texts(**tokens), atol=1e-5, rtol=1e-4)
    assert isinstance(model, VisionTextDualEncoderModel)
    factorised = build_student(StudentConfig(**base, text_embedding_rank=8), dim=24)
    assert "word embeddings are factorised (rank 8)" in dual_encoder_problem(factorised)
