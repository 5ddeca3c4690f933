"""``dsmd export``: write a trained student as a self-contained folder (:mod:`dsmd.export.folder`).

The folder is built in ``OUT.partial/`` and checked before it is renamed into place: it is
loaded back (:func:`dsmd.export.reader.load_export`) and must give the checkpoint's features
on real inputs (largest absolute difference printed; above :data:`TOLERANCE` the export fails);
with ``onnx`` the two ONNX encoders are checked the same way with onnxruntime.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model

import dsmd
from dsmd.errors import DsmdError
from dsmd.export.probes import probe_inputs
from dsmd.inference.exported import CONFIG, EXPORT_VERSION, PREPROCESSING, WEIGHTS, export_files, seal_config
from dsmd.models import DualEncoder
from dsmd.models.blueprint import student_blueprint
from dsmd.runtime.checksums import file_records, sha256_file
from dsmd.runtime.files import check_writable, write_json_atomic
from dsmd.runtime.lock import exclusive_folder
from dsmd.store.manifest import teacher_space
from dsmd.training.checkpoint import student_from_checkpoint

TOLERANCE = 1e-4


def export_meta(student: DualEncoder, state: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """The ``dsmd_export`` entry of config.json."""
    teacher = state.get("teacher") or {}
    return {
        "version": EXPORT_VERSION,
        "blueprint": student_blueprint(student),
        "space": teacher_space(teacher),
        "teacher": {k: teacher.get(k) for k in ("kind", "name", "dim")},
        "source": {
            "checkpoint": str(checkpoint),
            "sha256": sha256_file(checkpoint),
            "epoch": state.get("epoch"),
            "step": state.get("step"),
            "val_rsum": (state.get("val_metrics") or {}).get("rsum"),
        },
        "dsmd_version": dsmd.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def preprocessing(student: DualEncoder) -> dict[str, Any]:
    """What an ONNX-only user must do to an image before ``image_encoder.onnx``."""
    transform = student.image_transform(train=False).to_dict()
    return {
        "decode": (
            "RGB, 8 bits per channel, as an image viewer shows it: EXIF orientation applied "
            "(PIL.ImageOps.exif_transpose); an embedded ICC profile other than sRGB converted to sRGB; "
            "the first frame of an animation; transparency composited onto white; 16-bit images scaled to 8 bits"
        ),
        "resize": (
            "short side to size with PIL, then center crop size x size"
            if transform["crop"]
            else "to size x size with PIL (aspect ratio not kept)"
        ),
        "size": transform["size"],
        "crop": transform["crop"],
        "resample": transform["resample"],
        "mean": list(transform["mean"]),
        "std": list(transform["std"]),
        "scale": "pixels / 255, then (x - mean) / std per channel; layout (B, 3, size, size) float32",
        "text": {
            "max_length": student.max_text_length,
            "padding": "to the longest caption of the batch",
            "truncation": True,
        },
    }


def _write(student: DualEncoder, meta: dict[str, Any], folder: Path, log) -> bool:
    """Write the weights, config.json, tokenizer and preprocessing; returns whether the folder is
    also a transformers VisionTextDualEncoderModel."""
    from dsmd.export.hf_dual_encoder import save_dual_encoder

    hf = save_dual_encoder(student, folder, log)
    if hf:
        config = json.loads((folder / CONFIG).read_text())
        config["dsmd_export"] = {**meta, "weights_layout": "transformers_vision_text_dual_encoder"}
        write_json_atomic(folder / CONFIG, config)
    else:
        save_model(student, str(folder / WEIGHTS))
        write_json_atomic(folder / CONFIG, {"dsmd_export": {**meta, "weights_layout": "dsmd"}})
    student.text.tokenizer.save_pretrained(str(folder))
    write_json_atomic(folder / PREPROCESSING, preprocessing(student))
    return hf


def _record_files(folder: Path, extra: dict[str, Any]) -> None:
    """Add ``extra`` to config.json's ``dsmd_export``, record every file's size and sha256 there
    (``files``) and config.json's own (``sha256``); written last."""
    config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    config["dsmd_export"].update(extra, files=file_records(folder, export_files(folder)))
    write_json_atomic(folder / CONFIG, seal_config(config))


def _check(student: DualEncoder, folder: Path, cfg, log) -> None:
    """Load ``folder`` back and compare its features with the student's on real inputs."""
    from dsmd.inference import load_student as load_export

    images, captions, where = probe_inputs(cfg)
    exported = load_export(folder)
    with torch.inference_mode():
        pixels = torch.stack([student.image_transform(train=False)(im) for im in images])
        want_image, want_text = student.encode_images(pixels), student.encode_captions(captions)
    got_image = torch.from_numpy(exported.encode_images(images, progress=False))
    got_text = torch.from_numpy(exported.encode_texts(captions, progress=False))
    diff = max(float((got_image - want_image).abs().max()), float((got_text - want_text).abs().max()))
    log(f"export reloaded: largest difference from the checkpoint {diff:.2e} on {where}")
    if not diff <= TOLERANCE:
        raise DsmdError(
            f"the exported student gives features {diff:.2e} away from the checkpoint's (more than "
            f"{TOLERANCE:g}); the export is not written. Please report this."
        )


def export_student(
    checkpoint: str | Path, out: str | Path, onnx: bool = False, overwrite: bool = False, log=print, int8: bool = False
) -> Path:
    """Write the student of ``checkpoint`` into the export folder ``out`` (see the module docstring).

    Raises:
        DsmdError: ``out`` exists (without ``overwrite``) or cannot be written, the checkpoint
            cannot be read, or the reloaded export (or an ONNX encoder) does not match it.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    check_writable(out.parent, "--out")
    with exclusive_folder(out, "--out"):  # one writer: a second export into OUT is refused, naming this one
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise DsmdError(f"{out} already exists. Choose another --out, or pass --overwrite to replace it.")
        return _export(checkpoint, out, onnx or int8, int8, log)


def _export(checkpoint: Path, out: Path, onnx: bool, int8: bool, log) -> Path:
    """Build the export in ``OUT.partial`` and rename it into place (the caller holds OUT's lock)."""
    student, cfg, state = student_from_checkpoint(checkpoint)
    partial = Path(str(out) + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        hf = _write(student, export_meta(student, state, checkpoint), partial, log)
        _check(student, partial, cfg, log)
        if onnx:
            from dsmd.export.onnx_export import export_onnx

            export_onnx(student, partial, cfg, log)
        extra = {}
        if int8:
            from dsmd.export.quantize import export_int8

            extra["int8"] = export_int8(student, partial, cfg, log)
        _record_files(partial, extra)
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log(f"exported {out}" + (" (also a transformers VisionTextDualEncoderModel)" if hf else ""))
    return out
