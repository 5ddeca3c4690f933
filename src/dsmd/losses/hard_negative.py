"""Hard-negative distillation (HND, docs/method.md eq. 10-14): VSE++-style triplet hinges."""

from __future__ import annotations

import torch
from torch import Tensor

from dsmd.losses.feature import check_features, teacher_like


def negative_mask(image_ids: Tensor, mask_same_image: bool = True) -> Tensor:
    """Which pairs of a batch may serve as each other's negatives.

    Args:
        image_ids: ``(B,)`` image id of each pair.
        mask_same_image: if true, pairs of the same image are never negatives (our
            improvement); if false, only the pair itself is excluded, as in the published code.

    Returns:
        ``(B, B)`` bool; ``[n, j]`` is true when pair ``j`` is a valid negative for pair ``n``.
        The mask is symmetric.
    """
    if mask_same_image:
        return image_ids[:, None] != image_ids[None, :]
    batch = image_ids.shape[0]
    return ~torch.eye(batch, dtype=torch.bool, device=image_ids.device)


def _hinge_rows(cost: Tensor, valid: Tensor, hardest: bool) -> Tensor:
    """Per-row hinge over the valid entries of ``cost`` (``(B, B)``), a ``(B,)`` tensor.

    ``cost[n, j] = margin - s(n, n) + s_neg(n, j)``. With ``hardest`` the hinge of the largest
    valid cost (VSE++ "max violation"), else the sum of the hinges over all valid entries.
    A row without a valid entry gives 0.
    """
    if hardest:
        # The hinge is monotone, so the hinge of the max cost is the max of the hinges.
        worst = cost.masked_fill(~valid, float("-inf")).amax(dim=1)
        # Rows with no valid negative have worst = -inf; `where` drops them (and their
        # gradient) without any inf arithmetic reaching the backward pass.
        return torch.where(valid.any(dim=1), worst.clamp(min=0), torch.zeros_like(worst))
    return cost.clamp(min=0).masked_fill(~valid, 0.0).sum(dim=1)


def triplet_hinge(
    anchor: Tensor,
    positive: Tensor,
    valid: Tensor,
    margin: float = 0.0,
    hardest: bool = True,
) -> Tensor:
    """Bidirectional triplet hinge ``H(A, P)`` of docs/method.md, averaged over the batch.

    With ``s(i, j) = <A_i, P_j>``:
    ``H = (1/B) sum_n ([m - s(n,n) + max_j s(n,j)]_+ + [m - s(n,n) + max_j s(j,n)]_+)``,
    the maxima over ``j`` with ``valid[n, j]``.

    Args:
        anchor: ``(B, D)`` anchors ``A`` (student features).
        positive: ``(B, D)`` positives ``P`` (teacher features); row n matches anchor row n.
        valid: ``(B, B)`` symmetric bool mask of valid negatives (:func:`negative_mask`).
        margin: the margin ``m`` (alpha).
        hardest: hardest negative (true) or sum over all valid negatives (false).

    Returns:
        Scalar loss.
    """
    scores = anchor @ positive.T  # (B, B): scores[i, j] = s(i, j)
    diag = scores.diagonal()
    # Anchor n against the positives of other images: s(n, j) for j != n.
    anchor_cost = margin - diag[:, None] + scores
    # Positive n against the anchors of other images: s(j, n), laid out as row n.
    positive_cost = margin - diag[:, None] + scores.T
    per_pair = _hinge_rows(anchor_cost, valid, hardest) + _hinge_rows(positive_cost, valid, hardest)
    return per_pair.sum() / anchor.shape[0]


def hard_negative_distillation_loss(
    student_image: Tensor,
    student_text: Tensor,
    teacher_image: Tensor,
    teacher_text: Tensor,
    image_ids: Tensor,
    margin: float = 0.0,
    hardest: bool = True,
    mask_same_image: bool = True,
) -> Tensor:
    """Hard-negative distillation (HND, eq. 10-14).

    ``L_hnd = H(S^v, T^v) + H(S^t, T^t) + H(S^v, T^t) + H(S^t, T^v)``: visual, textual,
    image-to-text and text-to-image triplet hinges of student anchors against teacher
    positives and negatives (see :func:`triplet_hinge`).

    Args:
        student_image: ``(B, D)`` student image features ``S^v``.
        student_text: ``(B, D)`` student text features ``S^t``.
        teacher_image: ``(B, D)`` teacher image features ``T^v`` (no gradient).
        teacher_text: ``(B, D)`` teacher text features ``T^t`` (no gradient).
        image_ids: ``(B,)`` image id of each pair.
        margin: the hinge margin alpha (paper: 0).
        hardest: use the hardest negative (VSE++ max violation, paper); false sums the hinge
            over all valid negatives (the published code's default).
        mask_same_image: pairs of the same image are never negatives (default); false treats
            every other pair as a negative, for parity with the published code.

    Returns:
        Scalar loss. A pair with no valid negative in the batch contributes 0.
    """
    check_features(
        image_ids,
        student_image=student_image,
        student_text=student_text,
        teacher_image=teacher_image,
        teacher_text=teacher_text,
    )
    teacher_image = teacher_like(teacher_image, student_image)
    teacher_text = teacher_like(teacher_text, student_text)
    valid = negative_mask(image_ids.to(student_image.device), mask_same_image)
    return (
        triplet_hinge(student_image, teacher_image, valid, margin, hardest)
        + triplet_hinge(student_text, teacher_text, valid, margin, hardest)
        + triplet_hinge(student_image, teacher_text, valid, margin, hardest)
        + triplet_hinge(student_text, teacher_image, valid, margin, hardest)
    )


__all__ = ["hard_negative_distillation_loss", "negative_mask", "triplet_hinge"]
