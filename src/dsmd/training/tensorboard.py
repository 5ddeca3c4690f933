"""TensorBoard event files for a run (optional: without the ``tensorboard`` package, nothing is written).

Scalars, by optimiser step: ``loss/<name>`` (raw losses and the balanced ``total``),
``balancer/weight_<name>``, ``balancer/rate_<name>``, ``balancer/scale_<name>``, ``train/lr``,
``train/grad_norm``; by epoch: ``val/<metric>``. A resumed run purges the events after its
checkpoint, so the curves show one run. ``tensorboard --logdir OUT/tensorboard`` shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PREFIXES = {"w_": "balancer/weight_", "r_": "balancer/rate_", "s_": "balancer/scale_"}


def open_writer(folder: Path, resume_step: int | None, log) -> Any | None:
    """A ``SummaryWriter`` on ``folder`` (None when the tensorboard package is not installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log("tensorboard is not installed: no event files (pip install tensorboard; plots: dsmd report)")
        return None
    return SummaryWriter(str(folder), purge_step=None if resume_step is None else resume_step + 1)


def _tag(key: str) -> str | None:
    if key in ("step", "epoch", "micro_batches", "epoch_steps"):
        return None
    for prefix, tag in PREFIXES.items():
        if key.startswith(prefix):
            return tag + key[len(prefix) :]
    if key in ("lr", "grad_norm"):
        return f"train/{key}"
    if key.startswith("val_"):
        return f"val/{key[4:]}"
    return f"loss/{key}"


def write_scalars(writer, record: dict[str, Any], step: int) -> None:
    """Every number of a steps.jsonl or epochs.jsonl record, under its tag."""
    for key, value in record.items():
        tag = _tag(key)
        if tag is not None and isinstance(value, int | float):
            writer.add_scalar(tag, float(value), step)
