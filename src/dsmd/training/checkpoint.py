"""Checkpoints that carry their own config, written atomically and read without running code.

A checkpoint holds the resolved :class:`~dsmd.config.RunConfig`, the student, the optimiser,
the loss module (its feature queue), the balancer, the gradient scaler (``trainer``), the
position (``epoch``: epochs finished; ``epoch_pairs``: pairs of the next epoch's order already
trained on, 0 at an epoch boundary; ``step``: optimiser steps) and the best validation result,
so ``--resume`` continues exactly, also mid-epoch and on another number of processes, and
``dsmd eval`` rebuilds the student from the file alone. Only rank 0 writes.

A checkpoint is a zip file whose members carry the CRC32 of their bytes: reading checks every
member against it first (torch does not), so a file damaged anywhere is refused in one line
instead of loading wrong weights. Reading uses ``torch.load(weights_only=True)``: tensors and plain containers only. A file that
pickles anything else (a crafted checkpoint can carry code that unpickling would run) is
refused before any of it is used; dsmd's own checkpoints never hold such objects.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsmd.config import RunConfig, from_dict
from dsmd.errors import DsmdError
from dsmd.models import DualEncoder, build_student
from dsmd.runtime.files import atomic_path


class _Sink:
    """A file for ``torch.save`` that keeps the ``OSError`` of a failed write (a full disk):
    torch reports it as a ``RuntimeError`` about a stream position."""

    def __init__(self, raw):
        self.raw = raw
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[self.raw.write(view) :]
        except OSError as exc:
            self.error = exc
            raise
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` into a temporary file, then rename: never a half-written checkpoint.

    Raises:
        OSError: the file cannot be written (a full disk: ``ENOSPC``); the temporary file is
            removed and an existing checkpoint at ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb", buffering=0) as raw:
        sink = _Sink(raw)
        try:
            torch.save(state, sink)
        except RuntimeError as exc:
            if sink.error is not None:
                raise OSError(sink.error.errno, sink.error.strerror, str(path)) from exc
            raise


def _unreadable(path: Path, exc: BaseException) -> DsmdError:
    """One message for a file torch cannot load, whichever exception its bytes led to."""
    why = " ".join(str(exc).split())[:200]
    return DsmdError(
        f"cannot read checkpoint {path}: it is not a PyTorch file, or it is corrupt ({type(exc).__name__}: {why}). "
        "Is it a dsmd checkpoint?"
    )


def _check_crc(path: Path) -> None:
    """Every member of a zip checkpoint against the CRC32 it was written with (others: torch decides)."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:  # noqa: BLE001 - zipfile raises several types for a damaged archive
        raise _unreadable(path, exc) from exc
    if bad is not None:
        raise DsmdError(
            f"checkpoint {path} is damaged: its part {bad} differs from the CRC32 recorded when it was written. "
            "Use another checkpoint of the run (checkpoints/best.pt, last.pt) or train again."
        )


def verify_checkpoint(path: str | Path) -> str:
    """``dsmd verify CKPT``: every part against its CRC32, the config and weights loaded, the weights finite.

    Returns:
        One line saying what was checked.
    """
    state = load_checkpoint(path)
    student = student_from_state(state, str(path))
    bad = [name for name, t in student.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise DsmdError(
            f"checkpoint {path}: weights {_summary(bad)} hold NaN or inf. Use another checkpoint of the run."
        )
    return (
        f"checkpoint {path}: every part matches its CRC32; config and {student.num_parameters():,} weights "
        f"load, all finite (epoch {state.get('epoch')}, step {state.get('step')})"
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a dsmd checkpoint on the CPU, refusing anything but tensors and plain containers.

    Raises:
        DsmdError: the file is missing, unreadable, pickles other objects, or is not a dsmd
            checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise DsmdError(f"checkpoint not found: {path}. Train one with `dsmd train`, or check the path.")
    _check_crc(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise DsmdError(
                f"{path} pickles a Python object ({found.group(1)}); dsmd checkpoints hold only tensors and "
                "plain data, and loading it could run code stored in the file. Refused: use a "
                "checkpoint written by `dsmd train`."
            ) from exc
        raise _unreadable(path, exc) from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file (which depends on its bytes)
        raise _unreadable(path, exc) from exc
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise DsmdError(
            f"{path} is not a dsmd checkpoint (no config/model inside). Use a file written by `dsmd train`."
        )
    return state


def checkpoint_config(state: dict[str, Any]) -> RunConfig:
    """The :class:`RunConfig` stored in a checkpoint."""
    return from_dict(RunConfig, state["config"])


def _summary(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return f"{len(names)} ({shown}{', ...' if len(names) > limit else ''})"


def load_weights(module: nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(weights)``, failing with one line that summarises the mismatch.

    Raises:
        DsmdError: missing, unexpected or differently shaped entries (counted, a few named).
    """
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in weights and hasattr(weights[k], "shape") and tuple(weights[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{label} {_summary(names)}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("other shapes", shapes))
            if names
        ]
        raise DsmdError(
            f"{what} does not match the model its config builds: {'; '.join(parts)}. It was trained "
            "with another architecture: use its own config (or a new out_dir=)."
        )
    module.load_state_dict(weights)


def student_from_checkpoint(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[DualEncoder, RunConfig, dict]:
    """Rebuild a student from a checkpoint alone.

    Returns:
        ``(student in eval mode, RunConfig, checkpoint dict)``.
    """
    state = load_checkpoint(path)
    return student_from_state(state, str(path), device), checkpoint_config(state), state


def student_from_state(state: dict[str, Any], what: str, device: torch.device | str = "cpu") -> DualEncoder:
    """The student of a loaded checkpoint (:func:`load_checkpoint`), in eval mode on ``device``.

    Args:
        what: names the checkpoint in error messages (its path).
    """
    cfg = checkpoint_config(state)
    normalize = bool(state.get("normalized", cfg.teacher.normalize))
    student = build_student(cfg.student, int(state["dim"]), normalize=normalize)
    load_weights(student, state["model"], what)
    return student.to(device).eval()
