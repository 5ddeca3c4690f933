"""An export's ONNX encoders, run by ONNX Runtime: the :class:`~dsmd.inference.encoder.Backend` of
``load_student(..., runtime="onnx" | "int8")``.

Runtimes of an export folder (:func:`resolve_runtime`):

- ``torch``: the safetensors weights in PyTorch (any device);
- ``onnx``: ``image_encoder.onnx`` and ``text_encoder.onnx`` (float32) on ONNX Runtime's CPU
  provider;
- ``int8``: the quantised encoders ``dsmd export --int8`` wrote (``*.int8.onnx``; a tower the
  export kept in float, because quantising it failed its gate, runs its float32 file);
- ``auto``: ``int8`` when the export has it, else ``onnx`` when it has ONNX files, else ``torch``.

Preprocessing is the export's own (``preprocessing.json``, the tokenizer's files): only
onnxruntime, numpy, PIL and the tokenizer are needed at query time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsmd.data.transforms import ImageTransform
from dsmd.errors import DsmdError
from dsmd.inference.exported import IMAGE_ONNX, PREPROCESSING, TEXT_ONNX
from dsmd.models.text import CaptionTokenizer

RUNTIMES = ("torch", "onnx", "int8", "auto")
INT8_IMAGE_ONNX = "image_encoder.int8.onnx"
INT8_TEXT_ONNX = "text_encoder.int8.onnx"


def int8_files(meta: dict[str, Any]) -> dict[str, str] | None:
    """``{"image": file, "text": file}`` the ``int8`` runtime runs, from config.json's record; None without."""
    about = meta.get("int8")
    if not isinstance(about, dict):
        return None
    return {
        tower: about.get(tower, {}).get("file", default)
        for tower, default in (("image", IMAGE_ONNX), ("text", TEXT_ONNX))
    }


def resolve_runtime(folder: Path, meta: dict[str, Any], runtime: str) -> str:
    """The runtime ``runtime`` means for the export at ``folder`` (``auto`` resolved).

    Raises:
        DsmdError: an unknown runtime, or one whose files the export lacks (naming the fix).
    """
    if runtime not in RUNTIMES:
        raise DsmdError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}.")
    has_onnx = (folder / IMAGE_ONNX).is_file() and (folder / TEXT_ONNX).is_file()
    if runtime == "auto":
        return "int8" if int8_files(meta) else "onnx" if has_onnx else "torch"
    if runtime == "onnx" and not has_onnx:
        raise DsmdError(f"{folder} has no ONNX encoders: export with `dsmd export --onnx`, or use --runtime torch.")
    if runtime == "int8" and not int8_files(meta):
        raise DsmdError(f"{folder} has no INT8 encoders: export with `dsmd export --int8`, or use --runtime onnx.")
    return runtime


def _session(path: Path, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DsmdError("the ONNX runtimes need onnxruntime: pip install 'dsmd[onnx]'") from exc
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def image_transform_of(preprocessing: dict[str, Any]) -> ImageTransform:
    """The evaluation transform ``preprocessing.json`` describes."""
    crop = preprocessing.get("crop", "center crop" in str(preprocessing.get("resize", "")))
    return ImageTransform(
        size=int(preprocessing["size"]),
        mean=tuple(preprocessing["mean"]),
        std=tuple(preprocessing["std"]),
        resample=preprocessing["resample"],
        crop=bool(crop),
    )


class OnnxBackend:
    """Both encoders of an export as ONNX Runtime sessions (CPU), with the export's tokenizer.

    Args:
        files: ``{"image": name, "text": name}`` of the ONNX files in ``folder``.
        threads: ONNX Runtime's intra-op threads per session (None: its default, every core).
    """

    def __init__(self, folder: Path, files: dict[str, str], tokenizer: Any, max_length: int, threads: int | None):
        self.files = files
        self.image = _session(folder / files["image"], threads)
        self.text = _session(folder / files["text"], threads)
        self.tokenize = CaptionTokenizer(tokenizer, max_length)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` pixels -> ``(B, D)`` features."""
        (out,) = self.image.run(["features"], {"pixel_values": np.ascontiguousarray(pixel_values.cpu().numpy())})
        return torch.from_numpy(out)

    def encode_captions(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions -> ``(B, D)`` features (tokenised as in training)."""
        tokens = self.tokenize(texts)
        feeds = {name: tokens[name].numpy() for name in ("input_ids", "attention_mask")}
        (out,) = self.text.run(["features"], feeds)
        return torch.from_numpy(out)


def onnx_backend(
    folder: Path, meta: dict[str, Any], runtime: str, tokenizer: Any, threads: int | None
) -> tuple[OnnxBackend, ImageTransform]:
    """The backend of ``runtime`` (``onnx`` or ``int8``, resolved) and its image transform."""
    import json

    preprocessing = json.loads((folder / PREPROCESSING).read_text(encoding="utf-8"))
    files = int8_files(meta) if runtime == "int8" else {"image": IMAGE_ONNX, "text": TEXT_ONNX}
    backend = OnnxBackend(folder, files, tokenizer, int(preprocessing["text"]["max_length"]), threads)
    return backend, image_transform_of(preprocessing)
