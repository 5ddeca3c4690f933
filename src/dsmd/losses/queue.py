"""A ring buffer of teacher features: the negatives of contrastive distillation."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def check_queue_shape(size: int, dim: int) -> None:
    """Refuse a capacity that is not an integer >= 0 or a width that is not an integer >= 1."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"queue size must be an integer >= 0, got {size!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"feature dim must be an integer >= 1, got {dim!r}")


def ring_slots(ptr: Tensor, count: Tensor, batch: int, size: int) -> tuple[Tensor, int]:
    """Where a batch of ``batch`` rows goes in a ring of ``size`` slots, as if pushed one at a time.

    Only the last ``kept = min(batch, size)`` rows survive; returns their slots ``(kept,)`` and
    ``kept``, and advances ``ptr`` and ``count`` (long scalars) in place. ``batch, size >= 1``.
    """
    start = int(ptr)
    kept = min(batch, size)
    slots = (start + torch.arange(batch - kept, batch, device=ptr.device)) % size
    ptr.fill_((start + batch) % size)
    count.fill_(min(int(count) + batch, size))
    return slots, kept


class FeatureQueue(nn.Module):
    """The most recent ``size`` teacher image/text features and their image ids.

    The contents are registered buffers, so they move with ``.to(device)`` and are saved in
    ``state_dict()`` (a resumed run keeps its negatives). Enqueuing is exactly as if the rows
    were pushed one at a time: any batch size works, and a batch larger than the queue leaves
    its last ``size`` rows. Slots never written are never returned by :meth:`valid`.

    Under data parallelism every rank must enqueue the same (gathered) features so that the
    queues stay identical; the training loop does the gather.

    Args:
        size: capacity K (0 allowed: the queue is always empty).
        dim: feature width D.

    Buffers:
        image: ``(size, dim)`` teacher image features.
        text: ``(size, dim)`` teacher text features.
        image_ids: ``(size,)`` long, image id of each slot.
        ptr: long scalar, the next slot to write.
        count: long scalar, the number of written slots (at most ``size``).
    """

    image: Tensor
    text: Tensor
    image_ids: Tensor
    ptr: Tensor
    count: Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        check_queue_shape(size, dim)
        self.size = size
        self.dim = dim
        self.register_buffer("image", torch.zeros(size, dim))
        self.register_buffer("text", torch.zeros(size, dim))
        self.register_buffer("image_ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.count)

    @torch.no_grad()
    def enqueue(self, teacher_image: Tensor, teacher_text: Tensor, image_ids: Tensor) -> None:
        """Push a batch, overwriting the oldest entries.

        Args:
            teacher_image: ``(B, D)`` teacher image features (any B >= 0).
            teacher_text: ``(B, D)`` teacher text features.
            image_ids: ``(B,)`` image ids.
        """
        batch = teacher_image.shape[0] if teacher_image.dim() == 2 else -1
        if (
            teacher_image.shape != (batch, self.dim)
            or teacher_text.shape != (batch, self.dim)
            or image_ids.shape != (batch,)
        ):
            raise ValueError(
                f"enqueue needs (B, {self.dim}), (B, {self.dim}) and (B,) tensors; got "
                f"{tuple(teacher_image.shape)}, {tuple(teacher_text.shape)} and "
                f"{tuple(image_ids.shape)}"
            )
        if self.size == 0 or batch == 0:
            return
        slots, kept = ring_slots(self.ptr, self.count, batch, self.size)
        self.image[slots] = teacher_image[-kept:].detach().to(self.image)
        self.text[slots] = teacher_text[-kept:].detach().to(self.text)
        self.image_ids[slots] = image_ids[-kept:].to(self.image_ids)

    def valid(self) -> tuple[Tensor, Tensor, Tensor]:
        """The written entries, in slot order (order carries no meaning).

        Returns:
            ``(image (K, D), text (K, D), image_ids (K,))`` with ``K = len(self)``. They are
            copies, so a later :meth:`enqueue` cannot alter a graph that used them.
        """
        # Writing starts at slot 0 and goes round, so until the queue is full the written
        # slots are exactly the first `count`.
        count = int(self.count)
        return (
            self.image[:count].clone(),
            self.text[:count].clone(),
            self.image_ids[:count].clone(),
        )

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"


__all__ = ["FeatureQueue"]
