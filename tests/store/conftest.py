"""Fixtures of the feature-store tests: teacher features "computed elsewhere" for the synthetic dataset."""

from __future__ import annotations

import pytest
import torch

from dsmd.config import load_config
from dsmd.data.datasets import load_dataset

DIM = 16


@pytest.fixture
def imported_overrides(tiny_overrides) -> list[str]:
    """``tiny_overrides`` for a store of imported features (no teacher model)."""
    return [o for o in tiny_overrides if not o.startswith("teacher.")] + ["teacher.kind=imported"]


@pytest.fixture
def external_features(imported_overrides) -> dict[str, dict[str, torch.Tensor]]:
    """Per split, raw (not unit-norm) ``image (N_i, D)`` and ``text (N_t, D)`` float32 features.

    With the tiny run's data settings: train 12 images / 24 captions, val and test 6 / 12.
    """
    dataset = load_dataset(load_config(None, imported_overrides).data)
    g = torch.Generator().manual_seed(0)
    return {
        split: {
            "image": 3 * torch.randn(d.num_images, DIM, generator=g),
            "text": 3 * torch.randn(len(d), DIM, generator=g),
            "caption_image": torch.tensor(d.caption_image),
        }
        for split, d in dataset.items()
    }
