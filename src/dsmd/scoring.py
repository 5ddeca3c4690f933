"""``dsmd eval``: score a student checkpoint, or a store's teacher features, on a split.

A checkpoint is rebuilt from the file alone; what may change is only which data it is scored
on (``data.*``) and how (``train.device``, ``train.eval_batch_size``): the model's own config
(``student.*``, ``teacher.*``, ...) is refused, since the checkpoint's weights fix it.
"""

from __future__ import annotations

from pathlib import Path

from dsmd.config import with_overrides
from dsmd.data.datasets import load_split
from dsmd.errors import DsmdError
from dsmd.evaluation.retrieval import retrieval_metrics
from dsmd.evaluation.student_eval import evaluate_student
from dsmd.runtime.device import resolve_device
from dsmd.store import FeatureStore
from dsmd.training.checkpoint import load_student

EVAL_OVERRIDABLE = ("data.", "train.device=", "train.eval_batch_size=")


def check_eval_overrides(overrides: list[str]) -> None:
    """Refuse overrides that would not change anything a checkpoint is scored with."""
    for override in overrides:
        if not override.startswith(EVAL_OVERRIDABLE):
            key = override.split("=", 1)[0]
            raise DsmdError(
                f"dsmd eval --checkpoint: '{key}' cannot be changed: the checkpoint's weights fix its "
                "model. Only data.* (which data to score), train.device and train.eval_batch_size apply."
            )


def score_checkpoint(
    path: str | Path, split: str, overrides: list[str] | None = None, progress: bool = False
) -> tuple[dict, dict]:
    """Retrieval metrics of a checkpoint's student on ``split`` of its data (or ``data.*`` overrides).

    Returns:
        ``(metrics, about)``: ``i2t_r1 .. rsum`` and ``{"model", "data", "split", "images",
        "captions", "overrides"}``.
    """
    overrides = list(overrides or [])
    check_eval_overrides(overrides)
    student, cfg, _ = load_student(path)
    cfg = with_overrides(cfg, overrides)
    device = resolve_device(cfg.train.device)
    data = load_split(cfg.data, split)
    metrics = evaluate_student(student.to(device), data, cfg.train.eval_batch_size, device, progress=progress)
    source = cfg.data.manifest or cfg.data.root
    return metrics, {
        "model": str(path),
        "data": f"{cfg.data.kind} {source}",
        "split": split,
        "images": data.num_images,
        "captions": len(data),
        "overrides": overrides,
    }


def score_store(path: str | Path, split: str, progress: bool = False) -> tuple[dict, dict]:
    """Retrieval metrics of a store's teacher features on ``split`` (verified first)."""
    store = FeatureStore.open(path)
    store.verify([split] if split in store.manifest["splits"] else [], progress=progress)
    feats = store.split(split)
    metrics = retrieval_metrics(feats.image, feats.text, feats.caption_image)
    teacher = store.teacher.get("name") or store.teacher.get("kind")
    return metrics, {
        "model": f"teacher {teacher} (stored features)",
        "data": str(path),
        "split": split,
        "images": feats.num_images,
        "captions": feats.num_captions,
        "overrides": [],
    }
