"""``dsmd export --int8``: both ONNX encoders quantised to 8 bits, measured, and kept only when they pass.

- **Image tower**: static quantisation (QDQ, onnxruntime), uint8 activations and int8 weights per
  output channel, calibrated (min / max) on :data:`CALIBRATION_IMAGES` images of the run's
  *training* split. Two kinds of node stay in float, found from the graph (not by names): those
  that read the pixels (quantising the normalised input to one scale for three channels costs
  most of the accuracy), and the head after the spatial reduction (every node whose input is a
  ``(B, C)`` vector per image: an ImageNet head's softmax turns a small error into a large one).
- **Text tower**: dynamic quantisation, int8 weights (matrix products and embedding tables).
- **Gate**, on the run's validation split: each tower's features against float32 (mean and
  minimum cosine) and the validation RSUM with that tower in INT8 (the other in float32). A
  tower that fails a limit (:data:`LIMITS`) is kept in float32 and the export says so; the
  measurements, limits and settings go into ``config.json`` (``dsmd_export.int8``).

Written files: ``image_encoder.int8.onnx``, ``text_encoder.int8.onnx`` (a tower kept in float
has none); ``load_student(..., runtime="int8")`` runs them.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsmd.data.datasets import load_split
from dsmd.data.images import load_image
from dsmd.errors import DsmdError
from dsmd.evaluation.retrieval import retrieval_metrics
from dsmd.inference.exported import IMAGE_ONNX, TEXT_ONNX
from dsmd.inference.onnx_runtime import INT8_IMAGE_ONNX, INT8_TEXT_ONNX
from dsmd.models import DualEncoder

CALIBRATION_IMAGES = 128
LIMITS = {"mean_cosine": 0.98, "min_cosine": 0.85, "rsum_drop_percent": 2.0}


def float_nodes(model) -> dict[str, list[str]]:
    """The nodes of an image encoder that stay in float: ``{"input": [...], "head": [...]}``.

    ``input``: nodes that read a graph input; ``head``: nodes whose first input has rank <= 2
    (found by ONNX shape inference: the per-image vectors after pooling).
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.value_info, *graph.input, *graph.output]}
    inputs = {i.name for i in graph.input}
    return {
        "input": [n.name for n in graph.node if any(x in inputs for x in n.input)],
        "head": [n.name for n in graph.node if n.input and ranks.get(n.input[0], 3) <= 2],
    }


def _pixels(student: DualEncoder, paths: list[str]) -> np.ndarray:
    transform = student.image_transform(train=False)
    return np.stack([transform(load_image(p)).numpy() for p in paths])


class _Calibration:
    """onnxruntime's calibration reader over ``(N, 3, S, S)`` pixels, 16 at a time."""

    def __init__(self, pixels: np.ndarray):
        self._batches = iter([{"pixel_values": pixels[i : i + 16]} for i in range(0, len(pixels), 16)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantiser logs advice and prints progress: kept out of dsmd's output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quantize_image(folder: Path, calibration: np.ndarray) -> dict[str, Any]:
    """Write ``image_encoder.int8.onnx`` from ``image_encoder.onnx``; returns the settings used."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    kept = float_nodes(onnx.load(str(folder / IMAGE_ONNX)))
    with _quiet():
        quantize_static(
            str(folder / IMAGE_ONNX),
            str(folder / INT8_IMAGE_ONNX),
            _Calibration(calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=kept["input"] + kept["head"],
        )
    return {
        "method": "static QDQ, uint8 activations (min/max), int8 weights per channel",
        "calibration_images": len(calibration),
        "float_nodes": {k: len(v) for k, v in kept.items()},
    }


def quantize_text(folder: Path) -> dict[str, Any]:
    """Write ``text_encoder.int8.onnx`` from ``text_encoder.onnx``; returns the settings used."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(folder / TEXT_ONNX), str(folder / INT8_TEXT_ONNX), weight_type=QuantType.QInt8)
    return {"method": "dynamic, int8 weights"}


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def _encode(folder: Path, student: DualEncoder, pixels: np.ndarray, captions: list[str]) -> dict[str, np.ndarray]:
    """Features ``(N, D)`` of the validation images and captions with each of the four encoder files."""
    tokens = student.tokenize(captions)
    texts = {k: tokens[k].numpy() for k in ("input_ids", "attention_mask")}
    out = {}
    for key, name, feed, count in (
        ("image", IMAGE_ONNX, {"pixel_values": pixels}, len(pixels)),
        ("image_int8", INT8_IMAGE_ONNX, {"pixel_values": pixels}, len(pixels)),
        ("text", TEXT_ONNX, texts, len(captions)),
        ("text_int8", INT8_TEXT_ONNX, texts, len(captions)),
    ):
        session = _session(folder / name)
        out[key] = np.concatenate([session.run(["features"], _rows(feed, s, 64))[0] for s in range(0, count, 64)])
    return out


def _rows(feed: dict[str, np.ndarray], start: int, size: int) -> dict[str, np.ndarray]:
    return {k: v[start : start + size] for k, v in feed.items()}


def _rsum(image: np.ndarray, text: np.ndarray, caption_image: list[int]) -> float:
    return float(
        retrieval_metrics(torch.from_numpy(image), torch.from_numpy(text), torch.tensor(caption_image))["rsum"]
    )


def gate(features: dict[str, np.ndarray], caption_image: list[int]) -> dict[str, dict[str, Any]]:
    """Each tower's cosines against float32 and the validation RSUM with it in INT8, against :data:`LIMITS`."""
    base = _rsum(features["image"], features["text"], caption_image)
    result = {}
    for tower, other in (("image", "text"), ("text", "image")):
        cos = _cosines(features[tower], features[f"{tower}_int8"])
        quantised = {tower: features[f"{tower}_int8"], other: features[other]}
        rsum = _rsum(quantised["image"], quantised["text"], caption_image)
        drop = 100.0 * (base - rsum) / base if base > 0 else 0.0
        failed = [
            f"{name} {value:.4g}"
            for name, value, ok in (
                ("mean cosine", float(cos.mean()), cos.mean() >= LIMITS["mean_cosine"]),
                ("minimum cosine", float(cos.min()), cos.min() >= LIMITS["min_cosine"]),
                ("val RSUM drop %", drop, drop <= LIMITS["rsum_drop_percent"]),
            )
            if not ok
        ]
        result[tower] = {
            "mean_cosine": round(float(cos.mean()), 5),
            "min_cosine": round(float(cos.min()), 5),
            "val_rsum_float32": round(base, 2),
            "val_rsum_int8": round(rsum, 2),
            "val_rsum_drop_percent": round(drop, 3),
            "passed": not failed,
            "failed": failed,
        }
    return result


def export_int8(student: DualEncoder, folder: Path, cfg, log) -> dict[str, Any]:
    """Quantise both ONNX encoders in ``folder`` and gate them (see the module docstring).

    Returns:
        The ``dsmd_export.int8`` record: per tower its file, settings and gate measurements.

    Raises:
        DsmdError: the run's training or validation images cannot be read here (calibration
            and the gate need them).
    """
    try:
        train, val = load_split(cfg.data, "train"), load_split(cfg.data, "val")
    except DsmdError as exc:
        raise DsmdError(
            f"--int8 calibrates on the run's training images and checks on its validation split, which "
            f"cannot be read here ({exc}). Export where the run's data is, or without --int8."
        ) from exc
    rng = np.random.default_rng(0)
    chosen = rng.choice(train.num_images, min(CALIBRATION_IMAGES, train.num_images), replace=False)
    settings = {
        "image": quantize_image(folder, _pixels(student, [train.image_paths[i] for i in chosen])),
        "text": quantize_text(folder),
    }
    features = _encode(folder, student, _pixels(student, list(val.image_paths)), list(val.captions))
    measured = gate(features, list(val.caption_image))
    record: dict[str, Any] = {"limits": LIMITS, "gate_data": f"the run's val split ({val.num_images} images)"}
    for tower, float_file, int8_file in (("image", IMAGE_ONNX, INT8_IMAGE_ONNX), ("text", TEXT_ONNX, INT8_TEXT_ONNX)):
        m = measured[tower]
        size = (folder / int8_file).stat().st_size / (folder / float_file).stat().st_size
        if m["passed"]:
            log(
                f"int8 {tower} encoder: {100 * size:.0f}% of float32's file, cosine mean {m['mean_cosine']:.4f} "
                f"min {m['min_cosine']:.4f}, val RSUM {m['val_rsum_int8']:.1f} (float32 {m['val_rsum_float32']:.1f})"
            )
        else:
            (folder / int8_file).unlink()
            log(f"int8 {tower} encoder kept in float32: it failed the gate ({', '.join(m['failed'])})")
        record[tower] = {"file": int8_file if m["passed"] else float_file, **settings[tower], **m}
    return record
