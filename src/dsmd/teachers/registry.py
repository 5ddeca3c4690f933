"""Build the teacher a :class:`~dsmd.config.TeacherConfig` names."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from dsmd.config import TeacherConfig
from dsmd.errors import DsmdError
from dsmd.runtime.device import resolve_device
from dsmd.teachers.base import Teacher


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


def _build_beit3(cfg: TeacherConfig) -> Teacher:
    from dsmd.teachers.beit3 import BEiT3Teacher

    if not cfg.name_or_path:
        raise DsmdError(
            "teacher.kind=beit3 needs teacher.name_or_path: the path of an official BEiT-3 "
            "retrieval checkpoint such as beit3_base_patch16_384_coco_retrieval.pth (and "
            "teacher.tokenizer: the path of beit3.spm)."
        )
    return BEiT3Teacher(
        cfg.name_or_path,
        tokenizer=cfg.tokenizer,
        image_size=cfg.image_size,
        max_text_length=cfg.max_text_length,
        dtype=cfg.dtype,
    )


TEACHERS: dict[str, Callable[[TeacherConfig], Teacher]] = {
    "offline": _build_offline,
    "hf_clip": _build_hf_clip,
    "beit3": _build_beit3,
}


def available_teachers() -> list[str]:
    """The valid values of ``teacher.kind``."""
    return sorted(TEACHERS)


def build_teacher(cfg: TeacherConfig, device: str | torch.device | None = None) -> Teacher:
    """The frozen teacher ``cfg`` describes, on ``device`` (default: ``cfg.device``).

    Raises:
        DsmdError: an unknown ``cfg.kind`` or dtype, hf_clip or beit3 without
            ``name_or_path``, or a model (or tokenizer) that cannot be loaded.
    """
    if cfg.kind == "imported":
        raise DsmdError(
            "teacher.kind=imported has no model to run: its features come from files "
            "(dsmd import-features). Use a store built that way, or a teacher kind with a model: "
            f"{', '.join(available_teachers())}."
        )
    if cfg.kind not in TEACHERS:
        raise DsmdError(
            f"unknown teacher kind {cfg.kind!r}. Valid kinds: {', '.join(available_teachers())} "
            "(and imported, for features computed elsewhere: dsmd import-features)."
        )
    device = resolve_device(cfg.device if device is None else device)
    if cfg.dtype == "auto":
        # Half precision where it is fast (CUDA), full precision on the CPU.
        cfg = dataclasses.replace(cfg, dtype="float16" if device.type == "cuda" else "float32")
    teacher = TEACHERS[cfg.kind](cfg)
    return teacher.to(device)
