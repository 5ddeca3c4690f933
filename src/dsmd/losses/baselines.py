"""Baseline feature and logit distillers: Hinton's KD, FitNets hints and relational KD (RKD).

They serve as comparison points for the DSMD losses and follow the same conventions: ``(B, D)``
student and teacher features, teacher features without gradient, a scalar result.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dsmd.losses.feature import check_features, check_temperature, teacher_like

# Floor of the mean distance RKD divides by: a batch whose rows all coincide has no positive
# distance, and its (zero) distance matrix then stays zero instead of becoming 0 / 0.
_RKD_EPS = 1e-12


def _check_weight(name: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def kd_loss(
    student_image: Tensor,
    student_text: Tensor,
    teacher_image: Tensor,
    teacher_text: Tensor,
    temperature: float = 0.05,
) -> Tensor:
    """Hinton's knowledge distillation on the in-batch image-text similarity logits.

    With ``P = S^v S^t^T / tau`` and ``Q = T^v T^t^T / tau`` (``(B, B)``):
    ``L_kd = 1/2 [mean_i KL(softmax(Q_i.) || softmax(P_i.)) + mean_j KL(softmax(Q^T_j.) || softmax(P^T_j.))]``,
    the image-to-text rows and the text-to-image columns, with ``KL(p || q) = sum p log(p / q)``
    computed from log-softmaxes. There is no ``tau^2`` factor (the loss balancer makes a constant
    factor irrelevant).

    Args:
        student_image: ``(B, D)`` student image features ``S^v``.
        student_text: ``(B, D)`` student text features ``S^t``.
        teacher_image: ``(B, D)`` teacher image features ``T^v`` (no gradient).
        teacher_text: ``(B, D)`` teacher text features ``T^t`` (no gradient).
        temperature: tau, shared by student and teacher logits.

    Returns:
        Scalar loss, ``>= 0``; exactly 0 when the student features equal the teacher's.

    Raises:
        ValueError: the features are not ``(B, D)`` of one shape, or ``temperature <= 0``.
    """
    check_features(
        student_image=student_image,
        student_text=student_text,
        teacher_image=teacher_image,
        teacher_text=teacher_text,
    )
    check_temperature(temperature)
    teacher_image = teacher_like(teacher_image, student_image)
    teacher_text = teacher_like(teacher_text, student_text)
    student_logits = student_image @ student_text.T / temperature  # P, (B, B)
    teacher_logits = teacher_image @ teacher_text.T / temperature  # Q, (B, B)

    def kl(dim: int) -> Tensor:
        # Softmax along `dim`: dim=1 gives the rows of P and Q, dim=0 the rows of their transposes.
        log_q = F.log_softmax(student_logits, dim=dim)
        log_p = F.log_softmax(teacher_logits, dim=dim)
        return (log_p.exp() * (log_p - log_q)).sum(dim=dim).mean()

    return 0.5 * (kl(1) + kl(0))


def hint_loss(
    student_image: Tensor,
    student_text: Tensor,
    teacher_image: Tensor,
    teacher_text: Tensor,
) -> Tensor:
    """FitNets-style hint regression of the student features onto the teacher's.

    ``L_hint = mean_{n,d} (S^v - T^v)^2 + mean_{n,d} (S^t - T^t)^2``.

    Args:
        student_image: ``(B, D)`` student image features ``S^v``.
        student_text: ``(B, D)`` student text features ``S^t``.
        teacher_image: ``(B, D)`` teacher image features ``T^v`` (no gradient).
        teacher_text: ``(B, D)`` teacher text features ``T^t`` (no gradient).

    Returns:
        Scalar loss, ``>= 0``; 0 when the student features equal the teacher's.

    Raises:
        ValueError: the features are not ``(B, D)`` of one shape.
    """
    check_features(
        student_image=student_image,
        student_text=student_text,
        teacher_image=teacher_image,
        teacher_text=teacher_text,
    )
    image = (student_image - teacher_like(teacher_image, student_image)).pow(2).mean()
    text = (student_text - teacher_like(teacher_text, student_text)).pow(2).mean()
    return image + text


def _relations(x: Tensor) -> tuple[Tensor, Tensor]:
    """RKD's normalised distance matrix and angle tensor of the rows of ``x`` (``(B, D)``).

    Returns:
        ``(distance, angle)``: ``distance`` is ``(B, B)``, ``||x_i - x_j||`` divided by the mean
        of its positive entries (diagonal 0); ``angle`` is ``(B, B, B)``,
        ``angle[j, i, k] = <e_ji, e_jk>`` with ``e_ji = (x_i - x_j) / ||x_i - x_j||`` (0 when
        ``x_i = x_j``, in particular for ``i = j``).
    """
    diff = x[None, :, :] - x[:, None, :]  # (B, B, D): diff[j, i] = x_i - x_j
    squared = diff.pow(2).sum(dim=2)
    positive = squared > 0
    # sqrt has an infinite derivative at 0: take it only where the distance is positive, so
    # the diagonal (and coinciding rows) contribute a zero gradient instead of NaN.
    ones = torch.ones_like(squared)
    safe_norm = torch.where(positive, squared, ones).sqrt()
    dist = torch.where(positive, safe_norm, torch.zeros_like(squared))
    # Mean of the positive entries; the zeros add nothing to the sum.
    mean = dist.sum() / positive.sum().clamp(min=1)
    distance = dist / mean.clamp(min=_RKD_EPS)
    # Unit differences; 0 / 1 = 0 where the rows coincide, so no 1/eps factor reaches backward.
    unit = diff / safe_norm[:, :, None]
    angle = unit @ unit.transpose(1, 2)  # (B, B, B): angle[j, i, k] = <e_ji, e_jk>
    return distance, angle


def rkd_loss(
    student_image: Tensor,
    student_text: Tensor,
    teacher_image: Tensor,
    teacher_text: Tensor,
    distance_weight: float = 1.0,
    angle_weight: float = 2.0,
) -> Tensor:
    """Relational knowledge distillation (Park et al., CVPR 2019) within each modality.

    For each modality (image: ``S^v`` against ``T^v``; text: ``S^t`` against ``T^t``), as the
    authors' code computes it:

    * distance term: the ``(B, B)`` Euclidean distance matrices of the student rows and of the
      teacher rows (diagonal 0), each divided by the mean of its positive entries, compared by
      smooth-L1 (beta 1) averaged over all ``B^2`` entries;
    * angle term: for every anchor ``j`` the unit differences ``e_ji = (x_i - x_j) / ||x_i - x_j||``
      (0 for ``i = j``) and their cosines ``e_ji . e_jk`` for all ``(j, i, k)``, a ``(B, B, B)``
      tensor, compared by smooth-L1 averaged over all ``B^3`` entries.

    ``L_rkd = sum over the two modalities of (distance_weight * distance + angle_weight * angle)``.
    A batch whose rows all coincide has an all-zero distance matrix (the mean is floored at
    1e-12); coinciding rows have a zero unit difference and get a zero gradient, never NaN.

    Args:
        student_image: ``(B, D)`` student image features ``S^v``.
        student_text: ``(B, D)`` student text features ``S^t``.
        teacher_image: ``(B, D)`` teacher image features ``T^v`` (no gradient).
        teacher_text: ``(B, D)`` teacher text features ``T^t`` (no gradient).
        distance_weight: weight of the distance term (paper: 1).
        angle_weight: weight of the angle term (paper: 2).

    Returns:
        Scalar loss, ``>= 0``; 0 when the student features equal the teacher's.

    Raises:
        ValueError: the features are not ``(B, D)`` of one shape, or a weight is negative or
            not finite.
    """
    check_features(
        student_image=student_image,
        student_text=student_text,
        teacher_image=teacher_image,
        teacher_text=teacher_text,
    )
    _check_weight("distance_weight", distance_weight)
    _check_weight("angle_weight", angle_weight)
    loss = student_image.new_zeros(())
    for student, teacher in ((student_image, teacher_image), (student_text, teacher_text)):
        student_distance, student_angle = _relations(student)
        teacher_distance, teacher_angle = _relations(teacher_like(teacher, student))
        distance = F.smooth_l1_loss(student_distance, teacher_distance, beta=1.0)
        angle = F.smooth_l1_loss(student_angle, teacher_angle, beta=1.0)
        loss = loss + distance_weight * distance + angle_weight * angle
    return loss


__all__ = ["hint_loss", "kd_loss", "rkd_loss"]
