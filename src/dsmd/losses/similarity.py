"""Similarity distillation (SD, docs/method.md eq. 9)."""

from __future__ import annotations

from torch import Tensor

from dsmd.losses.feature import check_features, teacher_like


def similarity_distillation_loss(
    student_image: Tensor,
    student_text: Tensor,
    teacher_image: Tensor,
    teacher_text: Tensor,
) -> Tensor:
    """One minus the mean student-teacher dot product, per modality (SD, eq. 9).

    ``L_sd = (1 - mean_n <S^v_n, T^v_n>) + (1 - mean_n <S^t_n, T^t_n>)``. On unit vectors the
    dot product is the cosine similarity. The published code halves each term; we do not, as
    the loss balancer makes a constant factor irrelevant.

    Args:
        student_image: ``(B, D)`` student image features ``S^v``.
        student_text: ``(B, D)`` student text features ``S^t``.
        teacher_image: ``(B, D)`` teacher image features ``T^v`` (no gradient).
        teacher_text: ``(B, D)`` teacher text features ``T^t`` (no gradient).

    Returns:
        Scalar loss, in ``[0, 4]`` for unit vectors.
    """
    check_features(
        student_image=student_image,
        student_text=student_text,
        teacher_image=teacher_image,
        teacher_text=teacher_text,
    )
    image = (student_image * teacher_like(teacher_image, student_image)).sum(dim=1).mean()
    text = (student_text * teacher_like(teacher_text, student_text)).sum(dim=1).mean()
    return (1 - image) + (1 - text)


__all__ = ["similarity_distillation_loss"]
