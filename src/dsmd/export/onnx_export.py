"""The student's two encoders as ONNX files, checked against PyTorch with onnxruntime.

``image_encoder.onnx``: ``pixel_values (B, 3, S, S)`` float32 -> ``features (B, D)``;
``text_encoder.onnx``: ``input_ids``, ``attention_mask`` ``(B, L)`` int64 -> ``features (B, D)``
(L2-normalised when the student is). Batch and caption length are dynamic. Each file is run
with onnxruntime on real inputs at export; the largest absolute difference from PyTorch is
logged, and the export fails above :data:`TOLERANCE`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dsmd.errors import DsmdError
from dsmd.export.probes import probe_inputs
from dsmd.inference.exported import IMAGE_ONNX, TEXT_ONNX
from dsmd.models import DualEncoder

TOLERANCE = 1e-4
OPSET = 18


class _Images(nn.Module):
    def __init__(self, student: DualEncoder):
        super().__init__()
        self.student = student

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.student.encode_images(pixel_values)


class _Texts(nn.Module):
    def __init__(self, student: DualEncoder):
        super().__init__()
        self.student = student

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.student.encode_texts(input_ids, attention_mask)


def export_module(module: nn.Module, args: tuple, names: list[str], dynamic: dict, path: Path) -> None:
    """``module(*args)`` as an ONNX file at ``path`` (inputs ``names``, output ``features``; ``dynamic`` shapes)."""
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as exc:
        raise DsmdError(
            "--onnx needs the packages onnx, onnxscript and onnxruntime: pip install onnx onnxscript onnxruntime"
        ) from exc
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # (it warns that torchvision's operators are not registered)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                input_names=names,
                output_names=["features"],
                dynamic_shapes=dynamic,
                opset_version=OPSET,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    program.save(str(path))


def _compare(path: Path, feeds: dict[str, np.ndarray], expected: torch.Tensor) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["features"], feeds)
    return float(np.abs(got - expected.numpy()).max())


def export_onnx(student: DualEncoder, folder: Path, cfg, log) -> dict[str, float]:
    """Write and check both ONNX encoders in ``folder``; returns each one's largest difference."""
    images, captions, where = probe_inputs(cfg)
    student = student.eval()
    batch, length = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("length", min=2, max=4096)
    pixels = torch.stack([student.image_transform(train=False)(im) for im in images])
    tokens = student.tokenize(captions)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    export_module(_Images(student), (pixels,), ["pixel_values"], {"pixel_values": {0: batch}}, folder / IMAGE_ONNX)
    export_module(
        _Texts(student),
        (ids, mask),
        ["input_ids", "attention_mask"],
        {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}},
        folder / TEXT_ONNX,
    )
    with torch.inference_mode():
        want_image, want_text = student.encode_images(pixels), student.encode_texts(ids, mask)
    diffs = {
        "image": _compare(folder / IMAGE_ONNX, {"pixel_values": pixels.numpy()}, want_image),
        "text": _compare(folder / TEXT_ONNX, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}, want_text),
    }
    log(
        f"onnx: largest difference from PyTorch {diffs['image']:.2e} (images), {diffs['text']:.2e} (captions) on {where}"
    )
    for what, diff in diffs.items():
        if not diff <= TOLERANCE:
            raise DsmdError(
                f"the ONNX {what} encoder differs from PyTorch by {diff:.2e} (more than {TOLERANCE:g}); "
                "the export is not written. Please report this with your student's config."
            )
    return diffs
