"""Cross-modal retrieval metrics: recall@K in both directions, for any captions per image.

**Scores.** The similarity of caption ``j`` and image ``i`` is the dot product
``text[j] @ image[i]`` of already L2-normalised features, always evaluated the same way: the
float32 features' products are formed in float64, where they are exact, and summed in a fixed
pairwise order. The value depends on the two feature vectors only, not on which other pairs are
scored alongside, the block size, the BLAS library, the thread count or the device. Identical
features therefore give bit-identical scores, and a tie is a real tie.

**Ranks** are 0-based and count how many wrong items score *strictly* higher than the right one,
so **ties count in favour of the correct item**:

* text→image rank of caption ``j``: the number of images scoring strictly higher than its own
  image ``text_image_ids[j]``.
* image→text rank of image ``i``: the number of captions of *other* images scoring strictly
  higher than the best-scoring caption of ``i``. Images without a caption have no rank and
  are left out of the image→text recall (they still take part as text→image candidates).

R@K is the percentage of queries whose rank is below ``K``.

Exact ties do occur: a caption text shared by two images has one feature, hence the same score
against every image, and two copies of one image score the same against every caption.
Favouring the correct item makes the result independent of any sort order.

**How it stays fast and small.** The ``(N_t, N_i)`` similarity matrix is never held whole: it
is computed in blocks of ``chunk_size`` captions by a float32 matrix product. Its entries are
not used as scores, because their rounding depends on the block (with MKL, on the number of
rows in it), but they are within a proven bound of the exact dot product, whatever the summation
order: ``D * 2**-24 * |text[j]| * |image[i]|`` for ``D``-dimensional features (about ``5e-5``
for unit vectors at ``D = 768``). So are the approximate thresholds: for text→image, each
caption's entry for its own image in its block; for image→text, each image's best caption by
float32 row-wise dot products (``N_t * D`` work, computed first). An entry more than twice the
bound from its threshold settles its comparison outright: two comparisons per direction,
counted by matrix-vector products, no sorting. Only the entries closer than that (about 0.3%
of the pairs for random unit features at ``D = 768``, far fewer for a trained model, whose
correct pairs stand out) are scored exactly, and compared with their threshold's exact score.
:func:`retrieval_metrics` skips even that for a query that already ranks at or beyond its
largest ``K``, which cannot change a recall.

If ``torch`` allows float32 matrix products in reduced precision (TF32 or bfloat16, e.g. after
``torch.set_float32_matmul_precision("high")``), the bound is widened to match: the result is
the same, it only takes longer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dsmd.evaluation.exact_scores import ExactScores, error_coefficient, float32_band

__all__ = ["RetrievalRanks", "retrieval_metrics", "retrieval_ranks"]

# Default block budget in similarity entries (float32): 4M entries = 16 MiB per block, small
# enough to stay bounded at any scale, large enough that the matrix product stays efficient.
_BLOCK_ENTRIES = 1 << 22
# Image→text candidates held before they are scored (their ranks are final only after the pass).
_PENDING_PAIRS = 1 << 20
# A float32 sum of 0/1 values is exact below 2**24 terms, in any order.
_FLOAT32_EXACT_COUNT = 1 << 24


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
        chunk_size: captions per similarity block; memory is about ``3 * chunk_size * N_i``
            float32 entries. ``None`` picks a block of about 4M entries. The result does not
            depend on it.

    Returns:
        ``{"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"}`` for the
        default ``ks`` (keys follow ``ks``): recalls in percent and ``rsum``, their sum.

    Raises:
        ValueError: on empty inputs, mismatched shapes, ids out of range, non-finite
            features, or bad ``ks`` / ``chunk_size``.
    """
    ks = _check_ks(ks)
    # Ranks at or beyond the largest K count as misses for every K: no need to settle them.
    ranks = _ranks(image_features, text_features, text_image_ids, chunk_size, cap=max(ks))
    i2t, t2i = {}, {}
    for k in ks:
        i2t[f"i2t_r{k}"], t2i[f"t2i_r{k}"] = ranks.recall(k)
    metrics = {**i2t, **t2i}
    metrics["rsum"] = sum(metrics.values())
    return metrics


def retrieval_ranks(
    image_features: torch.Tensor | np.ndarray,
    text_features: torch.Tensor | np.ndarray,
    text_image_ids: torch.Tensor | np.ndarray | Sequence[int],
    chunk_size: int | None = None,
) -> RetrievalRanks:
    """Rank of the correct item for every image and caption query.

    Computed on the features' device (scores as described in the module docstring).
    Arguments are as for :func:`retrieval_metrics`.

    Returns:
        A :class:`RetrievalRanks` with ``(N_i,)`` image→text and ``(N_t,)`` text→image ranks,
        on the features' device.
    """
    return _ranks(image_features, text_features, text_image_ids, chunk_size, cap=None)


@torch.no_grad()
def _ranks(
    image_features: torch.Tensor | np.ndarray,
    text_features: torch.Tensor | np.ndarray,
    text_image_ids: torch.Tensor | np.ndarray | Sequence[int],
    chunk_size: int | None,
    cap: int | None,
) -> RetrievalRanks:
    """:func:`retrieval_ranks`; with ``cap``, a rank is exact only below ``cap`` (else ``>= cap``)."""
    image, text, ids = _check_inputs(image_features, text_features, text_image_ids)
    num_images, num_texts = image.shape[0], text.shape[0]
    if chunk_size is None:
        chunk_size = max(1, _BLOCK_ENTRIES // num_images)
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    # No rank reaches this, so "rank < limit" is always true without a cap.
    limit = max(num_texts, num_images) + 1 if cap is None else cap
    device = image.device
    exact = ExactScores(text, image, ids)

    # The bound on |float32 score - exact score| (module docstring), per caption against any
    # image and per image against any caption. Norms in float32 are within D * 2**-24 of the
    # truth; the factor 1.01 covers that. A comparison with an approximate threshold (itself
    # within the bound of the exact one) is settled outright beyond twice the bound.
    coefficient = error_coefficient(image.shape[1], device)
    text_norm = torch.linalg.vector_norm(text, dim=1).double() * 1.01
    image_norm = torch.linalg.vector_norm(image, dim=1).double() * 1.01
    underflow = (image.shape[1] + 1) * 2.0**-149
    t2i_slack = 2 * (coefficient * text_norm * image_norm.max() + underflow)
    i2t_slack = 2 * (coefficient * image_norm * text_norm.max() + underflow)
    # Approximate best caption score of every image, from float32 row-wise dot products. An
    # image without captions gets +inf: nothing reaches it.
    best_approx = torch.full((num_images,), math.inf, device=device)
    best_approx.scatter_reduce_(0, ids, _positive_scores(image, text, ids), reduce="amax", include_self=False)
    i2t_low, i2t_high = float32_band(best_approx.double(), i2t_slack)

    image_t = image.T
    i2t_rank = torch.zeros(num_images, dtype=torch.int64, device=device)
    t2i_rank = torch.empty(num_texts, dtype=torch.int64, device=device)
    # Buffers reused by every block: fresh multi-MiB allocations each time cost page faults.
    max_rows = min(chunk_size, num_texts)
    block_buffer = torch.empty(max_rows, num_images, device=device)
    flag_buffer = torch.empty(max_rows, num_images, device=device)  # 0/1 comparison results
    row_index = torch.arange(max_rows, device=device)
    ones_images = torch.ones(num_images, device=device)
    ones_rows = torch.ones(max_rows, device=device)
    pending_texts: list[torch.Tensor] = []
    pending_images: list[torch.Tensor] = []
    pending = 0

    def settle_pending() -> None:
        nonlocal pending
        if not pending:
            return
        texts, images = torch.cat(pending_texts), torch.cat(pending_images)
        pending_texts.clear()
        pending_images.clear()
        pending = 0
        keep = i2t_rank[images] < limit
        texts, images = texts[keep], images[keep]
        higher = exact(texts, images) > exact.best(images)
        i2t_rank.add_(torch.bincount(images[higher], minlength=num_images))

    for start in range(0, num_texts, chunk_size):
        stop = min(start + chunk_size, num_texts)
        rows = stop - start
        block = torch.mm(text[start:stop], image_t, out=block_buffer[:rows])
        correct = (row_index[:rows], ids[start:stop])
        # text→image thresholds: each caption's own entry, within the bound of its exact score.
        t2i_low, t2i_high = float32_band(block[correct].double(), t2i_slack[start:stop])
        # Then leave the correct pairs out of both counts: a caption's own image is never
        # above itself, and no caption of an image scores above that image's best.
        block[correct] = -math.inf
        flags = flag_buffer[:rows]

        # text→image: this block's rows against each caption's own score.
        low, high = t2i_low[:, None], t2i_high[:, None]
        above = _count(torch.gt(block, high, out=flags), 1, ones_images)
        reach = _count(torch.ge(block, low, out=flags), 1, ones_images)
        t2i_rank[start:stop] = above
        open_rows = ((reach > above) & (above < limit)).nonzero().squeeze(1)
        if open_rows.numel():
            near = block.index_select(0, open_rows)
            near = (near >= low[open_rows]) & (near <= high[open_rows])
            row, col = near.nonzero().unbind(1)
            texts = open_rows[row] + start
            higher = exact(texts, col) > exact.positive(texts)
            t2i_rank.index_add_(0, texts[higher], torch.ones_like(texts[higher]))

        # image→text: this block's captions against each image's best caption.
        ones_block = ones_rows[:rows]
        above = _count(torch.gt(block, i2t_high, out=flags), 0, ones_block)
        reach = _count(torch.ge(block, i2t_low, out=flags), 0, ones_block)
        i2t_rank.add_(above)
        open_cols = ((reach > above) & (i2t_rank < limit)).nonzero().squeeze(1)
        if open_cols.numel():
            near = block.index_select(1, open_cols)
            near = (near >= i2t_low[open_cols]) & (near <= i2t_high[open_cols])
            row, col = near.nonzero().unbind(1)
            pending_texts.append(row + start)
            pending_images.append(open_cols[col])
            pending += row.numel()
            if pending >= _PENDING_PAIRS:
                settle_pending()
    settle_pending()

    i2t_rank[best_approx == math.inf] = -1
    return RetrievalRanks(image_to_text=i2t_rank, text_to_image=t2i_rank)


def _positive_scores(image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """float32 score of every caption with its own image, ``(N_t,)``, within the bound.

    Gathered in chunks so that the ``(chunk, D)`` copy of images stays within the block budget.
    """
    positive = torch.empty(text.shape[0], device=text.device)
    chunk_size = max(1, _BLOCK_ENTRIES // text.shape[1])
    for start in range(0, text.shape[0], chunk_size):
        stop = min(start + chunk_size, text.shape[0])
        positive[start:stop] = (text[start:stop] * image[ids[start:stop]]).sum(1)
    return positive


def _count(flags: torch.Tensor, dim: int, ones: torch.Tensor) -> torch.Tensor:
    """Number of ones in a 0/1 float32 matrix along ``dim``, as int64."""
    if flags.shape[dim] >= _FLOAT32_EXACT_COUNT:
        return flags.sum(dim, dtype=torch.float64).long()
    # A matrix-vector product is much faster than a reduction, and exact for these counts.
    return torch.mv(flags if dim == 1 else flags.T, ones).long()


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
            f"image_features are on {image.device} but text_features on {text.device}; move both to the same device"
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
            f"text_image_ids must have shape ({text.shape[0]},), one image row per caption, got {tuple(ids.shape)}"
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
