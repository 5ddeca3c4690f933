"""Unpaired training items and batches: images without captions and captions without images,
each carrying its teacher feature (docs/method.md "Unpaired data").

:class:`UnpairedPoolDataset` reads item ``(modality, seed, row)`` of a pool: row ``row`` of the
image pool (its pixels through the student's training transform, random crops drawn from
``random`` seeded with ``seed``) or of the caption pool, with the teacher's feature of that row.
:class:`UnpairedCollator` stacks a micro-batch's items into an :class:`UnpairedBatch`, tokenizing
its captions; :class:`MixedBatch` is a micro-batch of pairs with the unpaired items trained beside
them. :func:`concat_tokens` joins the pairs' and the unpaired captions' tokens for one forward pass.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from dsmd.data.batches import PairBatch
from dsmd.data.datasets import CaptionedImages
from dsmd.data.loader import ImageCache


class PoolTargets(Protocol):
    """The teacher features of a pool (a :class:`dsmd.store.SplitFeatures` of a pool table)."""

    def image_rows(self, image_index: np.ndarray) -> torch.Tensor: ...

    def text_rows(self, caption_index: np.ndarray) -> torch.Tensor: ...


@dataclass
class UnpairedItem:
    """One unpaired item.

    Attributes:
        modality: ``image`` or ``text``.
        row: the item's row in its pool.
        teacher: ``(D,)`` float32, the teacher's feature of the item.
        pixels: ``(3, H, W)`` the student's view of an image (None for a caption).
        caption: the caption (None for an image).
    """

    modality: str
    row: int
    teacher: torch.Tensor
    pixels: torch.Tensor | None = None
    caption: str | None = None


@dataclass
class UnpairedBatch:
    """One rank's unpaired items of a micro-batch; the fields of a modality without a pool are None.

    Attributes:
        pixel_values: ``(B_v, 3, H, W)``.
        image_index: ``(B_v,)`` int64 pool rows of the images.
        teacher_image: ``(B_v, D)`` float32.
        input_ids, attention_mask: ``(B_t, L)`` int64, the tokenized captions.
        text_index: ``(B_t,)`` int64 pool rows of the captions.
        teacher_text: ``(B_t, D)`` float32.
        pad_id: the tokenizer's padding id (to join these tokens with the pairs').
    """

    pixel_values: torch.Tensor | None = None
    image_index: torch.Tensor | None = None
    teacher_image: torch.Tensor | None = None
    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    text_index: torch.Tensor | None = None
    teacher_text: torch.Tensor | None = None
    pad_id: int = 0

    def to(self, device: torch.device | str, non_blocking: bool = False) -> UnpairedBatch:
        """The batch's tensors on ``device``."""
        moved = {
            name: None if value is None else value.to(device, non_blocking=non_blocking)
            for name, value in vars(self).items()
            if name != "pad_id"
        }
        return UnpairedBatch(**moved, pad_id=self.pad_id)


@dataclass
class MixedBatch:
    """A micro-batch of pairs and the unpaired items trained beside them (same rank)."""

    pairs: PairBatch
    unpaired: UnpairedBatch


class UnpairedPoolDataset(Dataset):
    """Items of the image pool and the caption pool (either may be None); see the module docstring.

    Args:
        images, image_targets: the image pool and its teacher features.
        texts, text_targets: the caption pool and its teacher features.
        transform: the student's training transform (random crops when ``train.augment``).
        cache: decoded images kept between epochs.
    """

    def __init__(
        self,
        images: CaptionedImages | None,
        image_targets: PoolTargets | None,
        texts: CaptionedImages | None,
        text_targets: PoolTargets | None,
        transform: Callable,
        cache: ImageCache | None = None,
    ):
        self.images, self.image_targets = images, image_targets
        self.texts, self.text_targets = texts, text_targets
        self.transform = transform
        self.cache = cache or ImageCache(enabled=False, max_side=10**9)

    def size(self, modality: str) -> int:
        """Items in the pool of ``modality`` (0 without one)."""
        pool = self.images if modality == "image" else self.texts
        return 0 if pool is None else (pool.num_images if modality == "image" else len(pool))

    def __getitem__(self, key: tuple[str, int, int]) -> UnpairedItem:
        modality, seed, row = key
        index = np.array([row])
        if modality == "text":
            return UnpairedItem("text", row, self.text_targets.text_rows(index)[0], caption=self.texts.captions[row])
        random.seed(seed)
        pixels = self.transform(self.cache.get(self.images.image_paths[row]))
        return UnpairedItem("image", row, self.image_targets.image_rows(index)[0], pixels=pixels)


class UnpairedCollator:
    """Stack :class:`UnpairedItem` s into an :class:`UnpairedBatch`, tokenizing the captions.

    Args:
        tokenize: captions -> ``{"input_ids": (B, L), "attention_mask": (B, L)}``, picklable.
        pad_id: the tokenizer's padding id.
    """

    def __init__(self, tokenize: Callable[[Sequence[str]], dict[str, torch.Tensor]], pad_id: int = 0):
        self.tokenize = tokenize
        self.pad_id = pad_id

    def __call__(self, items: list[UnpairedItem]) -> UnpairedBatch:
        images = [item for item in items if item.modality == "image"]
        texts = [item for item in items if item.modality == "text"]
        batch = UnpairedBatch(pad_id=self.pad_id)
        if images:
            batch.pixel_values = torch.stack([item.pixels for item in images])
            batch.image_index = torch.tensor([item.row for item in images], dtype=torch.long)
            batch.teacher_image = torch.stack([item.teacher for item in images]).float()
        if texts:
            tokens = self.tokenize([item.caption for item in texts])
            batch.input_ids, batch.attention_mask = tokens["input_ids"], tokens["attention_mask"]
            batch.text_index = torch.tensor([item.row for item in texts], dtype=torch.long)
            batch.teacher_text = torch.stack([item.teacher for item in texts]).float()
        return batch


def concat_tokens(
    first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of two tokenized batches ``(B1, L1)`` and ``(B2, L2)``
    stacked into ``(B1 + B2, max(L1, L2))``, the shorter padded with ``pad_id`` and mask 0."""

    def pad(ids: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        extra = length - ids.shape[1]
        if extra == 0:
            return ids, mask
        return (
            torch.cat([ids, ids.new_full((ids.shape[0], extra), pad_id)], dim=1),
            torch.cat([mask, mask.new_zeros((mask.shape[0], extra))], dim=1),
        )

    length = max(first[0].shape[1], second[0].shape[1])
    (a_ids, a_mask), (b_ids, b_mask) = pad(*first, length), pad(*second, length)
    return torch.cat([a_ids, b_ids]), torch.cat([a_mask, b_mask])
