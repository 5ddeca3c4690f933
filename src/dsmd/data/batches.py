"""Typed training records: one pair (:class:`PairItem`) and a batch of them (:class:`PairBatch`).

A pair arrives carrying its teacher targets, whatever the source (rows of the feature store, or
the ``teacher_*.npy`` members of webdataset shards), so the training step never looks them up.
:class:`PairCollator` stacks items and tokenizes the captions, in the DataLoader's workers when
it has any. Padding (:meth:`PairBatch.padded`, :meth:`PairBatch.padding`) adds rows marked
``real = False``, which the losses never see: data parallelism uses it to give every rank a
micro-batch of the same size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class PairItem:
    """One training pair as a dataset yields it.

    Attributes:
        pixels: ``(3, H, W)`` the student's view of the image.
        caption: the caption text.
        caption_index: the caption's row in its split (and in the store).
        image_index: the row of the caption's image.
        view: 0 for the plain image, ``v >= 1`` for the stored augmented view ``v - 1``.
        teacher_image: ``(D,)`` float32, the teacher's feature of exactly that view.
        teacher_text: ``(D,)`` float32, the teacher's feature of the caption.
    """

    pixels: torch.Tensor
    caption: str
    caption_index: int
    image_index: int
    view: int
    teacher_image: torch.Tensor
    teacher_text: torch.Tensor


@dataclass
class PairBatch:
    """A micro-batch of ``B`` pairs (on one rank).

    Attributes:
        pixel_values: ``(B, 3, H, W)``.
        input_ids, attention_mask: ``(B, L)`` int64, the tokenized captions.
        caption_index, image_index, view_index: ``(B,)`` int64.
        teacher_image, teacher_text: ``(B, D)`` float32 targets.
        real: ``(B,)`` bool; False marks padding rows.
    """

    pixel_values: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    caption_index: torch.Tensor
    image_index: torch.Tensor
    view_index: torch.Tensor
    teacher_image: torch.Tensor
    teacher_text: torch.Tensor
    real: torch.Tensor

    def __len__(self) -> int:
        return int(self.real.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PairBatch:
        """The batch's tensors on ``device``."""
        return PairBatch(
            **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in dataclasses.fields(self)}
        )

    def padding(self, rows: int) -> PairBatch:
        """``rows`` copies of this batch's first pair, all marked padding (``real`` False)."""
        first = {f.name: getattr(self, f.name)[:1] for f in dataclasses.fields(self)}
        out = {name: value.expand(rows, *value.shape[1:]).clone() for name, value in first.items()}
        out["real"] = torch.zeros(rows, dtype=torch.bool)
        return PairBatch(**out)

    def padded(self, rows: int) -> PairBatch:
        """This batch followed by padding up to ``rows`` rows (itself when it has as many)."""
        if rows <= len(self):
            return self
        pad = self.padding(rows - len(self))
        return PairBatch(
            **{f.name: torch.cat([getattr(self, f.name), getattr(pad, f.name)]) for f in dataclasses.fields(self)}
        )


class PairCollator:
    """Stack :class:`PairItem` s into a :class:`PairBatch`, tokenizing the captions.

    Args:
        tokenize: captions -> ``{"input_ids": (B, L), "attention_mask": (B, L)}``; picklable
            (e.g. :meth:`dsmd.models.student.DualEncoder.caption_tokenizer`), so that DataLoader
            workers can run it.
    """

    def __init__(self, tokenize: Callable[[Sequence[str]], dict[str, torch.Tensor]]):
        self.tokenize = tokenize

    def __call__(self, items: list[PairItem]) -> PairBatch:
        tokens = self.tokenize([item.caption for item in items])
        return PairBatch(
            pixel_values=torch.stack([item.pixels for item in items]),
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            caption_index=torch.tensor([item.caption_index for item in items], dtype=torch.long),
            image_index=torch.tensor([item.image_index for item in items], dtype=torch.long),
            view_index=torch.tensor([item.view for item in items], dtype=torch.long),
            teacher_image=torch.stack([item.teacher_image for item in items]).float(),
            teacher_text=torch.stack([item.teacher_text for item in items]).float(),
            real=torch.ones(len(items), dtype=torch.bool),
        )
