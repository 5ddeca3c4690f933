"""Build the teacher a :class:`~dsmd.config.TeacherConfig` names."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dsmd.config import TeacherConfig
from dsmd.errors import DsmdError
from dsmd.teachers.base import Teacher
from dsmd.training.device import resolve_device


def _build_offline(cfg: TeacherConfig) -> Teacher:
    from dsmd.teachers.offline import OfflineTeacher

    return OfflineTeacher(dtype=cfg.dtype)


def _build_hf_clip(cfg: TeacherConfig) -> Teacher:
    from dsmd.teachers.hf_clip import HFClipTeacher

    if not cfg.name_or_path:
        raise DsmdError(
            "teacher.kind=hf_clip needs teacher.name_or_path: a hub name such as "
            "openai/clip-vit-base-patch32 or a local model folder."
        )
    return HFClipTeacher(cfg.name_or_path, dtype=cfg.dtype)


TEACHERS: dict[str, Callable[[TeacherConfig], Teacher]] = {
    "offline": _build_offline,
    "hf_clip": _build_hf_clip,
}


def available_teachers() -> list[str]:
    """The valid values of ``teacher.kind``."""
    return sorted(TEACHERS)


def build_teacher(cfg: TeacherConfig, device: str | torch.device | None = None) -> Teacher:
    """The frozen teacher ``cfg`` describes, on ``device`` (default: ``cfg.device``).

    Raises:
        DsmdError: an unknown ``cfg.kind`` or dtype, hf_clip without ``name_or_path``, or a
            model that cannot be loaded.
    """
    if cfg.kind not in TEACHERS:
        raise DsmdError(
            f"unknown teacher kind {cfg.kind!r}. Valid kinds: {', '.join(available_teachers())}."
        )
    teacher = TEACHERS[cfg.kind](cfg)
    return teacher.to(resolve_device(cfg.device if device is None else device))
