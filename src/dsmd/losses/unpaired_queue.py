"""Ring buffers of teacher features of unpaired items: the negatives of ``u_cd``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dsmd.losses.queue import check_queue_shape, ring_slots


class ItemQueue(nn.Module):
    """The teacher features and pool rows of the most recent ``size`` unpaired items of one
    modality, written exactly as :class:`~dsmd.losses.queue.FeatureQueue` writes pairs: as if
    pushed one row at a time, unwritten slots never returned, saved in ``state_dict()``.

    Args:
        size: capacity K (0: always empty).
        dim: feature width D.

    Buffers:
        features: ``(size, dim)`` teacher features.
        ids: ``(size,)`` long, the pool row of each slot.
        ptr: long scalar, the next slot to write.
        count: long scalar, the written slots (at most ``size``).
    """

    features: Tensor
    ids: Tensor
    ptr: Tensor
    count: Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        check_queue_shape(size, dim)
        self.size, self.dim = size, dim
        self.register_buffer("features", torch.zeros(size, dim))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.count)

    @torch.no_grad()
    def enqueue(self, features: Tensor, ids: Tensor) -> None:
        """Push ``features (B, D)`` with their pool rows ``ids (B,)``, overwriting the oldest."""
        batch = features.shape[0] if features.dim() == 2 else -1
        if features.shape != (batch, self.dim) or ids.shape != (batch,):
            raise ValueError(
                f"enqueue needs (B, {self.dim}) and (B,) tensors; got {tuple(features.shape)} and {tuple(ids.shape)}"
            )
        if self.size == 0 or batch == 0:
            return
        slots, kept = ring_slots(self.ptr, self.count, batch, self.size)
        self.features[slots] = features[-kept:].detach().to(self.features)
        self.ids[slots] = ids[-kept:].to(self.ids)

    def valid(self) -> tuple[Tensor, Tensor]:
        """The written entries ``(features (K, D), ids (K,))``, copies, in slot order."""
        count = int(self.count)
        return self.features[:count].clone(), self.ids[:count].clone()

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"


class UnpairedQueues(nn.Module):
    """One :class:`ItemQueue` per modality: ``image`` (teacher features of unpaired images) and
    ``text`` (of unpaired captions), each of capacity ``size``."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.image = ItemQueue(size, dim)
        self.text = ItemQueue(size, dim)

    def of(self, modality: str) -> ItemQueue:
        """The queue of ``"image"`` or ``"text"``."""
        return {"image": self.image, "text": self.text}[modality]


__all__ = ["ItemQueue", "UnpairedQueues"]
