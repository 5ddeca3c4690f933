"""``dsmd.load_student``: an :class:`~dsmd.inference.encoder.Encoder` from an export folder or a
training checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from dsmd.errors import DsmdError
from dsmd.inference.encoder import Encoder
from dsmd.inference.exported import CONFIG, WEIGHTS, check_export_files, is_export, read_export_config
from dsmd.inference.onnx_runtime import onnx_backend, resolve_runtime
from dsmd.models.blueprint import student_from_blueprint
from dsmd.runtime.device import resolve_device
from dsmd.runtime.pretrained import load_hf_tokenizer
from dsmd.store.manifest import teacher_space
from dsmd.teachers.base import state_dict_sha256


def load_student(
    path: str | Path, device: str | torch.device = "cpu", runtime: str = "torch", threads: int | None = None
) -> Encoder:
    """The student saved at ``path``: an export folder (``dsmd export``) or a checkpoint (``.pt``).

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the ``torch`` runtime; ONNX ones run
            on the CPU).
        runtime: ``torch``, ``onnx`` (the export's float32 ONNX files), ``int8`` (its quantised
            ones) or ``auto`` (the fastest the export has): :mod:`dsmd.inference.onnx_runtime`.
        threads: ONNX Runtime's threads per encoder (None: its default).

    Raises:
        DsmdError: nothing there, an incomplete or foreign export, an unreadable checkpoint, a
            runtime whose files the export lacks.
    """
    path = Path(path).absolute()
    device = resolve_device(device)
    if path.is_dir():
        if not is_export(path):
            raise DsmdError(
                f"{path} is a folder without {CONFIG}: not a dsmd export. Give an export folder "
                "(`dsmd export`) or a checkpoint file."
            )
        return _from_export(path, device, runtime, threads)
    if not path.exists():
        raise DsmdError(f"no student at {path}: give an export folder (`dsmd export`) or a checkpoint file.")
    if runtime not in ("torch", "auto"):
        raise DsmdError(
            f"runtime {runtime!r} runs an export's ONNX files; {path} is a checkpoint. Export it first: "
            f"`dsmd export --checkpoint {path} --out DIR --onnx` (or --int8)."
        )
    return _from_checkpoint(path, device)


def _from_export(folder: Path, device: torch.device, runtime: str = "torch", threads: int | None = None) -> Encoder:
    meta = read_export_config(folder)
    check_export_files(folder, meta)
    runtime = resolve_runtime(folder, meta, runtime)
    layout = meta.get("weights_layout", "dsmd")
    if runtime != "torch":
        backend, transform = onnx_backend(
            folder, meta, runtime, load_hf_tokenizer(str(folder), f"export {folder}"), threads
        )
        device = torch.device("cpu")
    elif layout == "transformers_vision_text_dual_encoder":
        from dsmd.inference.hf_dual_encoder import load_dual_encoder

        backend, transform = load_dual_encoder(folder, meta, device)
    else:
        from safetensors.torch import load_model

        tokenizer = load_hf_tokenizer(str(folder), f"export {folder}")
        backend = student_from_blueprint(meta["blueprint"], tokenizer)
        try:
            load_model(backend, str(folder / WEIGHTS))
        except (RuntimeError, OSError, ValueError) as exc:
            raise DsmdError(
                f"{folder / WEIGHTS} does not hold the weights its config.json describes "
                f"({' '.join(str(exc).split())[:200]}). Export the student again."
            ) from exc
        backend = backend.to(device).eval()
        transform = backend.image_transform(train=False)
    bp = meta["blueprint"]
    return Encoder(
        backend,
        transform,
        bp["dim"],
        bp["normalize"],
        meta["space"],
        str(folder),
        meta["source"]["sha256"][:12],
        device,
        info={**meta, "runtime": runtime},
    )


def _from_checkpoint(path: Path, device: torch.device) -> Encoder:
    from dsmd.training.checkpoint import student_from_checkpoint

    student, _, state = student_from_checkpoint(path, device)
    return Encoder(
        student,
        student.image_transform(train=False),
        student.dim,
        student.normalize,
        teacher_space(state.get("teacher") or {}),
        str(path),
        state_dict_sha256(state["model"])[:12],
        device,
        info={"teacher": state.get("teacher")},
    )


def verify_export(folder: str | Path) -> str:
    """``dsmd verify EXPORT``: every file hashed against config.json's record, the student loaded.

    Returns:
        One line saying what was checked.
    """
    folder = Path(folder)
    if not is_export(folder):
        raise DsmdError(
            f"{folder} is none of what dsmd verify reads: a feature store (manifest.json), an index "
            f"(meta.json), an export ({CONFIG}) or a checkpoint file."
        )
    meta = read_export_config(folder)
    hashed = check_export_files(folder, meta, force=True)
    encoder = _from_export(folder.absolute(), torch.device("cpu"))
    files = meta.get("files")
    sums = (
        f"{len(files)} files match their sha256 ({hashed / 1e6:.1f} MB hashed)"
        if files
        else "no checksums recorded (an older dsmd wrote it)"
    )
    return f"export {folder}: {sums}; the student loads ({encoder.dim}-d, space {encoder.space})"
