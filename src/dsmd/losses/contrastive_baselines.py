"""Baseline contrastive losses: CLIP, CLIP-KD's interactive contrastive loss (ICL) and DCD.

All take ``(B, D)`` features and the ``(B,)`` image id of each pair; captions of the same image
are never treated as each other's negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dsmd.losses.feature import check_features, check_temperature, teacher_like
from dsmd.losses.hard_negative import negative_mask


def _with_teacher(
    student_image: Tensor,
    student_text: Tensor,
    teacher_image: Tensor,
    teacher_text: Tensor,
    image_ids: Tensor,
    temperature: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Check the inputs of a teacher-guided loss; ``(T^v, T^t, image_ids)`` ready to multiply."""
    check_features(
        image_ids,
        student_image=student_image,
        student_text=student_text,
        teacher_image=teacher_image,
        teacher_text=teacher_text,
    )
    check_temperature(temperature)
    teacher_image = teacher_like(teacher_image, student_image)
    teacher_text = teacher_like(teacher_text, student_text)
    return teacher_image, teacher_text, image_ids.to(student_image.device)


def masked_cross_entropy_rows(logits: Tensor, image_ids: Tensor) -> Tensor:
    """Mean over rows of the cross-entropy with the diagonal as target, same-image entries removed.

    ``CE_rows(L) = mean_n (log sum_{j in R(n)} exp(L[n, j]) - L[n, n])`` with ``R(n)`` the
    columns ``j`` with ``j = n`` or ``image_ids[j] != image_ids[n]``.

    Args:
        logits: ``(B, B)`` logits; row n scores anchor n against every candidate.
        image_ids: ``(B,)`` image id of each pair.

    Returns:
        Scalar loss; a row whose only candidate is its diagonal contributes 0.
    """
    diagonal = torch.eye(image_ids.shape[0], dtype=torch.bool, device=image_ids.device)
    masked = logits.masked_fill(~(negative_mask(image_ids) | diagonal), float("-inf"))
    return (torch.logsumexp(masked, dim=1) - logits.diagonal()).mean()


def interactive_contrastive_loss(
    student_image: Tensor,
    student_text: Tensor,
    teacher_image: Tensor,
    teacher_text: Tensor,
    image_ids: Tensor,
    temperature: float = 0.07,
) -> Tensor:
    """CLIP-KD's interactive contrastive loss (ICL): student anchors against teacher candidates.

    ``L_icl = 1/2 [CE_rows(S^v T^t^T / tau) + CE_rows(S^t T^v^T / tau)]``, where ``CE_rows`` is
    :func:`masked_cross_entropy_rows` (diagonal target, other captions of the same image removed).

    Args:
        student_image: ``(B, D)`` student image features ``S^v``.
        student_text: ``(B, D)`` student text features ``S^t``.
        teacher_image: ``(B, D)`` teacher image features ``T^v`` (no gradient).
        teacher_text: ``(B, D)`` teacher text features ``T^t`` (no gradient).
        image_ids: ``(B,)`` image id of each pair.
        temperature: tau.

    Returns:
        Scalar loss, ``>= 0``.

    Raises:
        ValueError: the features are not ``(B, D)`` of one shape, ``image_ids`` is not a
            ``(B,)`` integer tensor, or ``temperature <= 0``.
    """
    teacher_image, teacher_text, image_ids = _with_teacher(
        student_image, student_text, teacher_image, teacher_text, image_ids, temperature
    )
    image_to_text = masked_cross_entropy_rows(student_image @ teacher_text.T / temperature, image_ids)
    text_to_image = masked_cross_entropy_rows(student_text @ teacher_image.T / temperature, image_ids)
    return 0.5 * (image_to_text + text_to_image)


def clip_loss(
    student_image: Tensor,
    student_text: Tensor,
    image_ids: Tensor,
    temperature: float = 0.07,
) -> Tensor:
    """The plain CLIP loss of the student's own images and texts (no teacher).

    ``L_clip = 1/2 [CE_rows(S^v S^t^T / tau) + CE_rows(S^t S^v^T / tau)]`` with
    :func:`masked_cross_entropy_rows`.

    Args:
        student_image: ``(B, D)`` student image features ``S^v``.
        student_text: ``(B, D)`` student text features ``S^t``.
        image_ids: ``(B,)`` image id of each pair.
        temperature: tau.

    Returns:
        Scalar loss, ``>= 0``.

    Raises:
        ValueError: the features are not ``(B, D)`` of one shape, ``image_ids`` is not a
            ``(B,)`` integer tensor, or ``temperature <= 0``.
    """
    check_features(image_ids, student_image=student_image, student_text=student_text)
    check_temperature(temperature)
    image_ids = image_ids.to(student_image.device)
    logits = student_image @ student_text.T / temperature
    return 0.5 * (masked_cross_entropy_rows(logits, image_ids) + masked_cross_entropy_rows(logits.T, image_ids))


def _dcd_direction(student_logits: Tensor, teacher_logits: Tensor, valid: Tensor, negatives: int) -> Tensor:
    """DCD's loss for one direction, ``mean_n L_n`` (see :func:`dcd_loss`).

    Args:
        student_logits: ``(B, B)`` student logits ``P``; row n is anchor n, the diagonal its positive.
        teacher_logits: ``(B, B)`` teacher logits ``Q`` (no gradient), same layout.
        valid: ``(B, B)`` bool, the entries that may serve as negatives (other images only).
        negatives: how many teacher-hardest negatives to keep per anchor.

    Returns:
        Scalar loss.
    """
    count = min(negatives, student_logits.shape[1])
    # The teacher's hardest valid negatives of each row; rows with fewer than `count` valid
    # entries also pick invalid ones (scored -inf), which `chosen` then drops.
    ranked = teacher_logits.masked_fill(~valid, float("-inf"))
    index = ranked.topk(count, dim=1).indices  # (B, count)
    positive = torch.ones(index.shape[0], 1, dtype=torch.bool, device=index.device)
    chosen = torch.cat([positive, valid.gather(1, index)], dim=1)

    def candidates(logits: Tensor) -> Tensor:
        # (B, 1 + count): the positive first, then the chosen negatives; dropped ones at -inf.
        picked = torch.cat([logits.diagonal()[:, None], logits.gather(1, index)], dim=1)
        return picked.masked_fill(~chosen, float("-inf"))

    log_p_teacher = F.log_softmax(candidates(teacher_logits), dim=1)
    log_p_student = F.log_softmax(candidates(student_logits), dim=1)
    # Dropped candidates have probability 0 and add nothing to the KL; zero their log terms
    # first so no -inf - (-inf) arises.
    zero = torch.zeros_like(log_p_student)
    log_ratio = torch.where(chosen, log_p_teacher, zero) - torch.where(chosen, log_p_student, zero)
    kl = (log_p_teacher.exp() * log_ratio).sum(dim=1)
    weight = log_p_teacher[:, 0].exp().detach()  # the teacher's confidence in the positive
    per_anchor = weight * kl + (1 - weight) * (-log_p_student[:, 0])
    return per_anchor.mean()


def dcd_loss(
    student_image: Tensor,
    student_text: Tensor,
    teacher_image: Tensor,
    teacher_text: Tensor,
    image_ids: Tensor,
    temperature: float = 0.07,
    negatives: int = 8,
) -> Tensor:
    """Dynamic contrastive distillation (DCD; Rao et al., IEEE TMM 2023), as we read its abstract.

    This is our reading of the paper's abstract; the full text's exact weighting may differ.
    The abstract says (1) the teacher estimates the hard samples for the student, which does
    contrastive learning on them, and (2) "dynamic distillation" learns samples of different
    difficulty dynamically, balancing the difficulty of the teacher's knowledge against the
    student's own self-learning. We read (1) as a candidate set picked by the teacher and (2) as
    a per-anchor mix of distillation and self-supervision weighted by the teacher's confidence.

    With ``P = S^v S^t^T / tau`` and ``Q = T^v T^t^T / tau`` (``(B, B)``), for each direction
    (image-to-text: rows of ``P`` and ``Q``; text-to-image: rows of ``P^T`` and ``Q^T``) and each
    anchor ``n``:

    * ``C_n`` = the positive (diagonal) and the ``negatives`` entries of row ``Q_n`` the teacher
      scores highest, among other images' entries (fewer if fewer exist; possibly the positive
      alone);
    * ``p^T_n = softmax(Q_n over C_n)``, ``p^S_n = softmax(P_n over C_n)``;
    * ``w_n = p^T_n[positive]``, without gradient: where the teacher is sure, its knowledge is
      trustworthy and easy, and the student imitates the teacher's whole distribution over the
      hard candidates; where the teacher is unsure (a hard anchor for the teacher too), the
      student relies on its own contrastive learning of the true positive;
    * ``L_n = w_n KL(p^T_n || p^S_n) + (1 - w_n) (-log p^S_n[positive])``.

    ``L_dcd = 1/2 (mean_n L_n (image-to-text) + mean_n L_n (text-to-image))``.

    Args:
        student_image: ``(B, D)`` student image features ``S^v``.
        student_text: ``(B, D)`` student text features ``S^t``.
        teacher_image: ``(B, D)`` teacher image features ``T^v`` (no gradient).
        teacher_text: ``(B, D)`` teacher text features ``T^t`` (no gradient).
        image_ids: ``(B,)`` image id of each pair.
        temperature: tau, shared by student and teacher logits.
        negatives: how many teacher-hardest in-batch negatives each anchor keeps (``>= 0``).

    Returns:
        Scalar loss, ``>= 0``; 0 for an anchor whose candidate set is the positive alone.

    Raises:
        ValueError: the features are not ``(B, D)`` of one shape, ``image_ids`` is not a
            ``(B,)`` integer tensor, ``temperature <= 0``, or ``negatives`` is not an
            integer ``>= 0``.
    """
    teacher_image, teacher_text, image_ids = _with_teacher(
        student_image, student_text, teacher_image, teacher_text, image_ids, temperature
    )
    if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 0:
        raise ValueError(f"negatives must be an integer >= 0, got {negatives!r}")
    valid = negative_mask(image_ids)  # other images only: symmetric, false on the diagonal
    student_logits = student_image @ student_text.T / temperature
    teacher_logits = teacher_image @ teacher_text.T / temperature
    image_to_text = _dcd_direction(student_logits, teacher_logits, valid, negatives)
    text_to_image = _dcd_direction(student_logits.T, teacher_logits.T, valid, negatives)
    return 0.5 * (image_to_text + text_to_image)


__all__ = ["clip_loss", "dcd_loss", "interactive_contrastive_loss", "masked_cross_entropy_rows"]
