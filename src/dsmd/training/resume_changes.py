"""What ``dsmd train --resume`` may change: settings of how long and where a run goes on, never
what it learns.

A resumed run continues the config saved in its checkpoint. Overrides given with ``--resume``
may extend or stop it (``train.epochs``, ``train.max_steps``, ``train.lr_decay_epochs``) or move it
(device, precision, workers, logging, checkpoint frequency, the store's or the run's location);
any other change (the batch size, the losses, the student...) would make the run's record say
one thing for steps trained another way, and is refused with one line naming it. An allowed
change is printed and appended to ``RUN/resumes.jsonl`` as ``{"step": N, "changes": {key: [old,
new]}}``; ``config.yaml`` keeps the config the run started with.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dsmd.config import RunConfig
from dsmd.errors import DsmdError

RESUMABLE = (
    "train.epochs",
    "train.max_steps",
    "train.lr_decay_epochs",
    "train.device",
    "train.precision",
    "train.compile",
    "train.grad_checkpointing",
    "train.eval_batch_size",
    "train.log_every",
    "train.checkpoint_every",
    "train.dist_backend",
    "train.dist_timeout_s",
    "data.num_workers",
    "data.cache_images",
    "store",
    "out_dir",
)
NOT_RECORDED = ("out_dir",)  # where the run folder is now: not a change of the run


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else key))
    return flat


def config_changes(before: RunConfig, after: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (before, after)}`` for every setting that differs (defaults included)."""
    old, new = _flat(dataclasses.asdict(before)), _flat(dataclasses.asdict(after))
    return {
        key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)
    }


def check_resume_changes(changes: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    """The changes to record (all allowed ones but the run's location).

    Raises:
        DsmdError: a change of a setting that is not in :data:`RESUMABLE`, naming it.
    """
    refused = {key: change for key, change in changes.items() if key not in RESUMABLE}
    if refused:
        named = ", ".join(f"{key} ({old!r} -> {new!r})" for key, (old, new) in refused.items())
        raise DsmdError(
            f"dsmd train --resume: {named} cannot change when a run resumes: its steps so far were trained with the "
            f"first value. Only {', '.join(k for k in RESUMABLE if k != 'out_dir')} may change on resume; to train "
            "with other settings, start a new run (another out_dir=)."
        )
    return {key: change for key, change in changes.items() if key not in NOT_RECORDED}
