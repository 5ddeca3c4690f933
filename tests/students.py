"""Trained tiny students for the export, inference and search tests (session-wide, built once)."""

from __future__ import annotations

from pathlib import Path

from dsmd.config import load_config
from dsmd.extraction import extract
from dsmd.training import train
from tiny_runs import tiny_run_overrides


def train_tiny(tiny_models: dict[str, str], manifest: str, root: Path, *extra: str) -> dict:
    """A store and a one-epoch run; returns the overrides, the store and the best checkpoint."""
    overrides = [*tiny_run_overrides(tiny_models, manifest, root), "train.epochs=1", *extra]
    cfg = load_config(None, overrides)
    extract(cfg, progress=False, log=lambda *_: None)
    result = train(cfg, progress=False, log=lambda *_: None)
    return {
        "root": root,
        "overrides": overrides,
        "cfg": cfg,
        "store": Path(cfg.store),
        "checkpoint": Path(result.best_checkpoint),
    }
