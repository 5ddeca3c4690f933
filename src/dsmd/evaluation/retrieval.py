"""Cross-modal retrieval metrics: recall@K in both directions, for any captions per image.

The similarity of caption ``j`` and image ``i`` is the dot product ``text[j] @ image[i]`` of
already L2-normalised features. Ranks are 0-based and count how many wrong items score
*strictly* higher than the right one, so **ties count in favour of the correct item**:

* text→image rank of caption ``j``: the number of images scoring strictly higher than its own
  image ``text_image_ids[j]``.
* image→text rank of image ``i``: the number of captions of *other* images scoring strictly
  higher than the best-scoring caption of ``i``. Images without a caption have no rank and
  are left out of the image→text recall (they still take part as text→image candidates).

R@K is the percentage of queries whose rank is below ``K``.

Exact ties are rare with float features but do occur at scale (random float32 features of
MSCOCO 5K size, 125M pairs, already give one) and with duplicate captions; favouring the
correct item makes the result independent of any sort order.

How it stays fast and small: the ``(N_t, N_i)`` similarity matrix is never held whole. It is
computed in blocks of ``chunk_size`` captions, and each block serves both directions with two
comparisons and two counts, no sorting. The image→text side needs every image's best positive
score *before* the pass, so the positive scores are computed first, as row-wise dot products
(``N_t * D`` work, next to ``N_t * N_i * D`` for the product), and then written into each block
over the product's own entries for those pairs. That makes every (caption, image) pair have
exactly one score, used in both directions. Without it a positive would have two scores that
can differ in the last bit (the product sums in another order than the dot product), and an
image's best caption could count as beating itself. The price: a negative that scores within
float32 rounding (~1e-7) of a positive may land on either side of it, as in any float
implementation, so exact duplicate features are only guaranteed to tie when both scores come
out bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["RetrievalRanks", "retrieval_metrics", "retrieval_ranks"]

# Default block budget in similarity entries (float32): 4M entries = 16 MiB per block, small
# enough to stay bounded at any scale, large enough that the matrix product stays efficient.
_BLOCK_ENTRIES = 1 << 22


@dataclass(frozen=True)
class RetrievalRanks:
    """0-based rank of the correct item for every query (ties favour the correct item).

    Attributes:
        image_to_text: ``(N_i,)`` int64; for each image, how many captions of other images
            score strictly higher than its best caption. ``-1`` for an image without captions.
        text_to_image: ``(N_t,)`` int64; for each caption, how many images score strictly
            higher than its own image.
    """

    image_to_text: torch.Tensor
    text_to_image: torch.Tensor

    def recall(self, k: int) -> tuple[float, float]:
        """Image→text and text→image recall@k, in percent.

        Images without captions are left out of the image→text share.
        """
        ranked = self.image_to_text[self.image_to_text >= 0]
        i2t = 100.0 * (ranked < k).double().mean().item()
        t2i = 100.0 * (self.text_to_image < k).double().mean().item()
        return i2t, t2i


def retrieval_metrics(
    image_features: torch.Tensor | np.ndarray,
    text_features: torch.Tensor | np.ndarray,
    text_image_ids: torch.Tensor | np.ndarray | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Recall@K for image→text and text→image retrieval, and their sum.

    Args:
        image_features: ``(N_i, D)`` L2-normalised image features (tensor or array).
        text_features: ``(N_t, D)`` L2-normalised caption features, same device as images.
        text_image_ids: ``(N_t,)`` integers; ``text_image_ids[j]`` is the row of caption
            ``j``'s image in ``image_features``. An image may have any number of captions,
            including none (it is then left out of image→text recall).
        ks: the cut-offs K, each a positive integer.
        chunk_size: captions per similarity block; memory is about ``chunk_size * N_i``
            float32 entries. ``None`` picks a block of about 4M entries.

    Returns:
        ``{"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"}`` for the
        default ``ks`` (keys follow ``ks``): recalls in percent and ``rsum``, their sum.

    Raises:
        ValueError: on empty inputs, mismatched shapes, ids out of range, non-finite
            features, or bad ``ks`` / ``chunk_size``.
    """
    ks = _check_ks(ks)
    ranks = retrieval_ranks(image_features, text_features, text_image_ids, chunk_size)
    i2t, t2i = {}, {}
    for k in ks:
        i2t[f"i2t_r{k}"], t2i[f"t2i_r{k}"] = ranks.recall(k)
    metrics = {**i2t, **t2i}
    metrics["rsum"] = sum(metrics.values())
    return metrics


@torch.no_grad()
def retrieval_ranks(
    image_features: torch.Tensor | np.ndarray,
    text_features: torch.Tensor | np.ndarray,
    text_image_ids: torch.Tensor | np.ndarray | Sequence[int],
    chunk_size: int | None = None,
) -> RetrievalRanks:
    """Rank of the correct item for every image and caption query.

    Computed in float32 on the features' device. Arguments are as for
    :func:`retrieval_metrics`.

    Returns:
        A :class:`RetrievalRanks` with ``(N_i,)`` image→text and ``(N_t,)`` text→image ranks,
        on the features' device.
    """
    image, text, ids = _check_inputs(image_features, text_features, text_image_ids)
    num_images, num_texts = image.shape[0], text.shape[0]
    if chunk_size is None:
        chunk_size = max(1, _BLOCK_ENTRIES // num_images)
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")

    positive = _positive_scores(image, text, ids)
    captions_per_image = torch.bincount(ids, minlength=num_images)
    # An image without captions gets +inf as its best score, so nothing beats it; its rank is
    # replaced by -1 at the end.
    best_positive = torch.full((num_images,), float("inf"), device=image.device)
    best_positive.scatter_reduce_(0, ids, positive, reduce="amax", include_self=False)

    image_t = image.T
    i2t_rank = torch.zeros(num_images, dtype=torch.int64, device=image.device)
    t2i_rank = torch.empty(num_texts, dtype=torch.int64, device=image.device)
    # Buffers reused by every block: fresh multi-MiB allocations each time cost page faults.
    max_rows = min(chunk_size, num_texts)
    block_buffer = torch.empty(max_rows, num_images, device=image.device)
    above_buffer = torch.empty(max_rows, num_images, dtype=torch.bool, device=image.device)
    row_index = torch.arange(max_rows, device=image.device)
    for start in range(0, num_texts, chunk_size):
        stop = min(start + chunk_size, num_texts)
        block = torch.mm(text[start:stop], image_t, out=block_buffer[: stop - start])
        above = above_buffer[: stop - start]
        block[row_index[: stop - start], ids[start:stop]] = positive[start:stop]
        # A positive never beats itself or the best positive, so "strictly higher than the
        # best positive" counts exactly the other images' captions.
        # int32 counts sum faster than the default int64 and cannot overflow within a block.
        i2t_rank += torch.gt(block, best_positive, out=above).sum(0, dtype=torch.int32)
        t2i_rank[start:stop] = torch.gt(block, positive[start:stop, None], out=above).sum(
            1, dtype=torch.int32
        )

    i2t_rank[captions_per_image == 0] = -1
    return RetrievalRanks(image_to_text=i2t_rank, text_to_image=t2i_rank)


def _positive_scores(image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Score of every caption with its own image, ``(N_t,)`` float32.

    Gathered in chunks so that the ``(chunk, D)`` copy of images stays within the block budget.
    """
    positive = torch.empty(text.shape[0], device=text.device)
    chunk_size = max(1, _BLOCK_ENTRIES // text.shape[1])
    for start in range(0, text.shape[0], chunk_size):
        stop = min(start + chunk_size, text.shape[0])
        positive[start:stop] = (text[start:stop] * image[ids[start:stop]]).sum(1)
    return positive


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    return ks


def _check_inputs(
    image_features: torch.Tensor | np.ndarray,
    text_features: torch.Tensor | np.ndarray,
    text_image_ids: torch.Tensor | np.ndarray | Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate and convert to float32 features and int64 ids on the features' device."""
    image = _as_features(image_features, "image_features")
    text = _as_features(text_features, "text_features")
    if image.device != text.device:
        raise ValueError(
            f"image_features are on {image.device} but text_features on {text.device}; "
            "move both to the same device"
        )
    if image.shape[1] != text.shape[1]:
        raise ValueError(
            f"image_features have dimension {image.shape[1]} but text_features "
            f"{text.shape[1]}; both must come from the same embedding space"
        )
    ids = torch.as_tensor(text_image_ids)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"text_image_ids must hold integers, got dtype {ids.dtype}")
    if ids.shape != (text.shape[0],):
        raise ValueError(
            f"text_image_ids must have shape ({text.shape[0]},), one image row per caption, "
            f"got {tuple(ids.shape)}"
        )
    ids = ids.to(device=image.device, dtype=torch.int64)
    low, high = ids.min().item(), ids.max().item()
    if low < 0 or high >= image.shape[0]:
        raise ValueError(
            f"text_image_ids must lie in [0, {image.shape[0]}) (rows of image_features), "
            f"got values from {low} to {high}"
        )
    return image, text, ids


def _as_features(features: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    features = torch.as_tensor(features)
    if features.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(features.shape)}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(features.shape)}); nothing to rank")
    if not features.is_floating_point():
        raise ValueError(f"{name} must hold floating-point values, got dtype {features.dtype}")
    features = features.to(torch.float32)
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} contain NaN or infinite values; check the encoder outputs")
    return features
