"""Checkpoints that carry their own config, written atomically.

A checkpoint holds the resolved :class:`~dsmd.config.RunConfig`, the student, the optimiser,
the loss module (its feature queue), the balancer, the gradient scaler (``trainer``), the
position (``epoch``: epochs finished; ``epoch_pairs``: pairs of the next epoch's order already
trained on, 0 at an epoch boundary; ``step``: optimiser steps) and the best validation
result, so ``--resume`` continues exactly, also mid-epoch and on another number of
processes, and ``dsmd eval`` rebuilds the student from the file alone. Only rank 0 writes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from dsmd.config import RunConfig, from_dict
from dsmd.errors import DsmdError


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` into a temporary file, then rename: never a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def copy_atomic(src: str | Path, dst: str | Path) -> None:
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a dsmd checkpoint on the CPU.

    Raises:
        DsmdError: the file is missing, unreadable or not a dsmd checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise DsmdError(f"checkpoint not found: {path}. Train one with `dsmd train`, or check the path.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise DsmdError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}). Is it a dsmd checkpoint?") from exc
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise DsmdError(f"{path} is not a dsmd checkpoint (no config/model inside). Use a file written by `dsmd train`.")
    return state


def checkpoint_config(state: dict[str, Any]) -> RunConfig:
    """The :class:`RunConfig` stored in a checkpoint."""
    return from_dict(RunConfig, state["config"])


def load_student(path: str | Path, device: torch.device | str = "cpu"):
    """Rebuild a student from a checkpoint alone.

    Returns:
        ``(student in eval mode, RunConfig, checkpoint dict)``.
    """
    from dsmd.models import build_student  # here, so that reading a config never imports the towers

    state = load_checkpoint(path)
    cfg = checkpoint_config(state)
    normalize = bool(state.get("normalized", cfg.teacher.normalize))
    student = build_student(cfg.student, int(state["dim"]), normalize=normalize, initialise=False)
    try:
        student.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise DsmdError(f"{path} does not match the student its config describes ({str(exc)[:300]}).") from exc
    return student.to(device).eval(), cfg, state
