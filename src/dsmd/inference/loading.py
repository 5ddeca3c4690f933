"""``dsmd.load_student``: an :class:`~dsmd.inference.encoder.Encoder` from an export folder or a
training checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from dsmd.errors import DsmdError
from dsmd.inference.encoder import Encoder
from dsmd.inference.exported import CONFIG, WEIGHTS, is_export, read_export_config
from dsmd.models.blueprint import student_from_blueprint
from dsmd.runtime.device import resolve_device
from dsmd.runtime.pretrained import load_hf_tokenizer
from dsmd.store.manifest import teacher_space
from dsmd.teachers.base import state_dict_sha256


def load_student(path: str | Path, device: str | torch.device = "cpu") -> Encoder:
    """The student saved at ``path``: an export folder (``dsmd export``) or a checkpoint (``.pt``).

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.

    Raises:
        DsmdError: nothing there, an incomplete or foreign export, an unreadable checkpoint.
    """
    path = Path(path).absolute()
    device = resolve_device(device)
    if path.is_dir():
        if not is_export(path):
            raise DsmdError(
                f"{path} is a folder without {CONFIG}: not a dsmd export. Give an export folder "
                "(`dsmd export`) or a checkpoint file."
            )
        return _from_export(path, device)
    if not path.exists():
        raise DsmdError(f"no student at {path}: give an export folder (`dsmd export`) or a checkpoint file.")
    return _from_checkpoint(path, device)


def _from_export(folder: Path, device: torch.device) -> Encoder:
    meta = read_export_config(folder)
    layout = meta.get("weights_layout", "dsmd")
    if layout == "transformers_vision_text_dual_encoder":
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
        info=meta,
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
