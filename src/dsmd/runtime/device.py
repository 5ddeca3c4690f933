"""Device selection."""

from __future__ import annotations

import torch

from dsmd.errors import DsmdError


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` (or None) picks CUDA when there is a GPU, else the CPU; ``cuda`` without one is refused."""
    if isinstance(name, torch.device):
        return name
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DsmdError(f"device '{name}' asked for, but no CUDA GPU is visible. Use device=cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise DsmdError(f"unknown device '{name}'. Use auto, cpu or cuda[:N].") from exc
