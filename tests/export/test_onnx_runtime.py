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
