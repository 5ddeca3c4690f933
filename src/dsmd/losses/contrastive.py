"""Contrastive distillation (CD, docs/method.md eq. 5-7) against queues of teacher features."""

from __future__ import annotations

import torch
from torch import Tensor

from dsmd.losses.feature import check_features, check_temperature, teacher_like


def queue_info_nce(
    anchor: Tensor,
    positive: Tensor,
    image_ids: Tensor,
    queue: Tensor,
    queue_image_ids: Tensor,
    temperature: float,
    mask_same_image: bool = True,
) -> Tensor:
    """InfoNCE of each anchor against its positive and the queue, averaged over the batch.

    ``-(1/B) sum_n log(exp(<a_n, p_n>/tau) / (exp(<a_n, p_n>/tau)
    + sum_{k in N(n)} exp(<a_n, q_k>/tau)))``, computed as a log-sum-exp for stability.

    Args:
        anchor: ``(B, D)`` student features.
        positive: ``(B, D)`` teacher features; row n is the positive of anchor n.
        image_ids: ``(B,)`` image id of each pair.
        queue: ``(K, D)`` teacher features of earlier pairs (valid entries only; K may be 0).
        queue_image_ids: ``(K,)`` image id of each queue entry.
        temperature: tau.
        mask_same_image: drop the queue entries of the anchor's own image from N(n).

    Returns:
        Scalar loss; 0 when no negative is left (the positive alone has probability 1).
    """
    positive_logit = (anchor * positive).sum(dim=1, keepdim=True) / temperature  # (B, 1)
    negative_logits = anchor @ queue.T / temperature  # (B, K)
    if mask_same_image:
        same_image = image_ids[:, None] == queue_image_ids[None, :]
        # -inf vanishes in the log-sum-exp: those entries are simply not negatives.
        negative_logits = negative_logits.masked_fill(same_image, float("-inf"))
    logits = torch.cat([positive_logit, negative_logits], dim=1)
    return (torch.logsumexp(logits, dim=1) - positive_logit[:, 0]).mean()


def contrastive_distillation_loss(
    student_image: Tensor,
    student_text: Tensor,
    teacher_image: Tensor,
    teacher_text: Tensor,
    image_ids: Tensor,
    queue_image: Tensor,
    queue_text: Tensor,
    queue_image_ids: Tensor,
    temperature: float = 0.05,
    mask_same_image: bool = True,
    cross_modal: bool = False,
) -> Tensor:
    """Contrastive distillation (CD, eq. 5-7): ``L_cd = L_cd^v + L_cd^t``.

    For each modality the student feature must pick its teacher feature out of the
    teacher features in the queue (:func:`queue_info_nce`). The queue is the one from
    *before* this batch; the caller enqueues the batch's teacher features once this loss is
    computed (the training step does it right after each micro-batch's backward pass, before
    the optimiser step, which is equivalent: teacher features do not depend on the student).

    Args:
        student_image: ``(B, D)`` student image features ``S^v``.
        student_text: ``(B, D)`` student text features ``S^t``.
        teacher_image: ``(B, D)`` teacher image features ``T^v`` (no gradient).
        teacher_text: ``(B, D)`` teacher text features ``T^t`` (no gradient).
        image_ids: ``(B,)`` image id of each pair.
        queue_image: ``(K, D)`` queued teacher image features ``Q^v`` (valid entries only).
        queue_text: ``(K, D)`` queued teacher text features ``Q^t``.
        queue_image_ids: ``(K,)`` image id of each queue entry.
        temperature: tau (paper: 0.05).
        mask_same_image: queue entries of the anchor's image are not negatives (default);
            false lets them act as negatives, for parity with the published code.
        cross_modal: also add ``<S^v_n, T^t_n>`` against ``Q^t`` and ``<S^t_n, T^v_n>``
            against ``Q^v`` (an earlier version of the authors' code).

    Returns:
        Scalar loss.
    """
    _, dim = check_features(
        image_ids,
        student_image=student_image,
        student_text=student_text,
        teacher_image=teacher_image,
        teacher_text=teacher_text,
    )
    check_temperature(temperature)
    size = queue_image_ids.shape[0] if queue_image_ids.dim() == 1 else -1
    if queue_image.shape != (size, dim) or queue_text.shape != (size, dim):
        raise ValueError(
            f"the queue must be (K, {dim}), (K, {dim}) and (K,); got "
            f"{tuple(queue_image.shape)}, {tuple(queue_text.shape)} and "
            f"{tuple(queue_image_ids.shape)}"
        )
    device = student_image.device
    teacher_image = teacher_like(teacher_image, student_image)
    teacher_text = teacher_like(teacher_text, student_text)
    queue_image = teacher_like(queue_image, student_image)
    queue_text = teacher_like(queue_text, student_text)
    image_ids = image_ids.to(device)
    queue_image_ids = queue_image_ids.to(device)

    def nce(anchor: Tensor, positive: Tensor, queue: Tensor) -> Tensor:
        return queue_info_nce(anchor, positive, image_ids, queue, queue_image_ids, temperature, mask_same_image)

    loss = nce(student_image, teacher_image, queue_image) + nce(student_text, teacher_text, queue_text)
    if cross_modal:
        loss = loss + nce(student_image, teacher_text, queue_text) + nce(student_text, teacher_image, queue_image)
    return loss


__all__ = ["contrastive_distillation_loss", "queue_info_nce"]
