"""DSMD's four losses on images without captions and captions without images
(docs/method.md "Unpaired data").

Each loss takes one modality's unpaired batch: the student's features ``S (B, D)``, the
teacher's ``T (B, D)`` (no gradient) and, where items of the batch or the queue can be each
other's negatives, ``ids (B,)``: each item's row in its pool, so that an item drawn twice is
never its own negative. :class:`UnpairedFeatures` carries the image and the text batch of a
step (either may be absent); :func:`unpaired_loss` computes one loss by name as the sum of its
terms over the modalities present, as the paired losses sum their image and text terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dsmd.losses.contrastive import queue_info_nce
from dsmd.losses.feature import check_features, check_temperature, teacher_like
from dsmd.losses.hard_negative import negative_mask, triplet_hinge
from dsmd.losses.unpaired_queue import UnpairedQueues

UNPAIRED_LOSS_NAMES = ("u_cd", "u_fd", "u_sd", "u_hnd")


@dataclass
class UnpairedRows:
    """One modality's unpaired batch.

    Attributes:
        student: ``(B, D)`` student features ``S^m``.
        teacher: ``(B, D)`` teacher features ``T^m`` (no gradient).
        ids: ``(B,)`` int64, each item's row in its pool.
    """

    student: Tensor
    teacher: Tensor
    ids: Tensor


@dataclass
class UnpairedFeatures:
    """The unpaired batches of one step: ``image`` (images without captions) and ``text``
    (captions without images), each an :class:`UnpairedRows` or None."""

    image: UnpairedRows | None = None
    text: UnpairedRows | None = None

    def present(self) -> list[tuple[str, UnpairedRows]]:
        """``[("image", rows), ("text", rows)]``, the modalities this step has, image first."""
        return [(name, rows) for name, rows in (("image", self.image), ("text", self.text)) if rows is not None]


def unpaired_feature_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """``u_fd`` of one modality: ``mean_{i,d} |S_{i,d} - T_{i,d}|``.

    Args:
        student: ``(B, D)``.
        teacher: ``(B, D)`` (no gradient).

    Returns:
        Scalar loss.
    """
    check_features(student=student, teacher=teacher)
    return (student - teacher_like(teacher, student)).abs().mean()


def unpaired_similarity_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """``u_sd`` of one modality: the student's cosine-similarity matrix of the batch against
    the teacher's, ``(1 / (B (B - 1))) sum_{i != j} (cos(S_i, S_j) - cos(T_i, T_j))^2``.

    Args:
        student: ``(B, D)``.
        teacher: ``(B, D)`` (no gradient).

    Returns:
        Scalar loss in ``[0, 4]``; 0 for a batch of one item.
    """
    size, _ = check_features(student=student, teacher=teacher)
    s = F.normalize(student, dim=1)
    t = F.normalize(teacher_like(teacher, student), dim=1)
    off = ~torch.eye(size, dtype=torch.bool, device=student.device)
    diff = (s @ s.T - t @ t.T)[off]
    if diff.numel() == 0:
        return student.sum() * 0.0
    return diff.pow(2).mean()


def unpaired_contrastive_loss(
    student: Tensor,
    teacher: Tensor,
    ids: Tensor,
    queue: Tensor,
    queue_ids: Tensor,
    temperature: float = 0.05,
    mask_same_item: bool = True,
) -> Tensor:
    """``u_cd`` of one modality: each student feature must pick out its own teacher feature
    among the teacher features of earlier unpaired items of its modality (the queue); queue
    entries of the same pool item are not negatives with ``mask_same_item``.

    Args:
        student: ``(B, D)``.
        teacher: ``(B, D)`` (no gradient); row i is the positive of ``student`` row i.
        ids: ``(B,)`` pool rows.
        queue: ``(K, D)`` queued teacher features (written entries only; K may be 0).
        queue_ids: ``(K,)`` their pool rows.
        temperature: tau (``loss.temperature``).
        mask_same_item: ``loss.mask_same_image``.

    Returns:
        Scalar loss; 0 when the queue holds no negative.
    """
    _, dim = check_features(ids, student=student, teacher=teacher)
    check_temperature(temperature)
    if queue.shape != (queue_ids.shape[0], dim) or queue_ids.dim() != 1:
        raise ValueError(
            f"the queue must be (K, {dim}) and (K,); got {tuple(queue.shape)} and {tuple(queue_ids.shape)}"
        )
    device = student.device
    return queue_info_nce(
        student,
        teacher_like(teacher, student),
        ids.to(device),
        teacher_like(queue, student),
        queue_ids.to(device),
        temperature,
        mask_same_item,
    )


def teacher_nearest(teacher: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Each item's nearest neighbour in the batch by the teacher: ``argmax_{j valid} <T_i, T_j>``.

    Args:
        teacher: ``(B, D)``.
        valid: ``(B, B)`` bool, which items may be item i's negative.

    Returns:
        ``(nearest (B,) int64, has (B,) bool)``; ties go to the lowest index; where item i has
        no valid item (``has`` false) ``nearest`` is meaningless.
    """
    similarity = (teacher @ teacher.T).masked_fill(~valid, float("-inf"))
    return similarity.argmax(dim=1), valid.any(dim=1)


def unpaired_hard_negative_loss(
    student: Tensor,
    teacher: Tensor,
    ids: Tensor,
    margin: float = 0.0,
    hardest: bool = True,
    mask_same_item: bool = True,
) -> Tensor:
    """``u_hnd`` of one modality: a two-way triplet hinge whose negative is the item the teacher
    finds nearest. With ``s(i, j) = <S_i, T_j>`` and ``k = k(i)`` the teacher's nearest valid
    neighbour of item i (:func:`teacher_nearest`)::

        (1/B) sum_i ([a - s(i,i) + s(i,k)]_+ + [a - s(i,i) + s(k,i)]_+)

    With ``hardest=False`` each hinge is summed over every valid ``j`` instead (then the choice
    of ``k`` plays no part: the sum form of HND's ``H(S, T)``).

    Args:
        student: ``(B, D)``.
        teacher: ``(B, D)`` (no gradient).
        ids: ``(B,)`` pool rows.
        margin: alpha (``loss.margin``).
        hardest: the teacher's nearest neighbour (true) or every valid item (false).
        mask_same_item: two draws of one pool item are not each other's negatives (``loss.mask_same_image``;
            an item is never its own).

    Returns:
        Scalar loss; an item without a valid negative adds 0.
    """
    size, _ = check_features(ids, student=student, teacher=teacher)
    teacher = teacher_like(teacher, student)
    valid = negative_mask(ids.to(student.device), mask_same_item)
    if not hardest:
        return triplet_hinge(student, teacher, valid, margin, hardest=False)
    nearest, has = teacher_nearest(teacher, valid)
    scores = student @ teacher.T
    rows = torch.arange(size, device=student.device)
    own = scores.diagonal()
    forward = (margin - own + scores[rows, nearest]).clamp(min=0)
    backward = (margin - own + scores[nearest, rows]).clamp(min=0)
    per_item = torch.where(has, forward + backward, torch.zeros_like(own))
    return per_item.sum() / size


def unpaired_loss(
    name: str,
    batch: UnpairedFeatures,
    queues: UnpairedQueues | None,
    temperature: float,
    margin: float,
    hardest: bool,
    mask_same_item: bool,
) -> Tensor:
    """Loss ``name`` (one of :data:`UNPAIRED_LOSS_NAMES`) of a step's unpaired batches: the sum
    of its term over the modalities present (``u_cd`` against each modality's queue as it was
    before this step).

    Raises:
        ValueError: an unknown name, a step without unpaired batches, or ``u_cd`` without queues.
    """
    if name not in UNPAIRED_LOSS_NAMES:
        raise ValueError(f"unknown unpaired loss {name!r}; choose from {', '.join(UNPAIRED_LOSS_NAMES)}")
    present = batch.present()
    if not present:
        raise ValueError(f"{name} needs a batch of unpaired images or captions; this step has none")
    terms = []
    for modality, rows in present:
        if name == "u_fd":
            terms.append(unpaired_feature_loss(rows.student, rows.teacher))
        elif name == "u_sd":
            terms.append(unpaired_similarity_loss(rows.student, rows.teacher))
        elif name == "u_hnd":
            terms.append(
                unpaired_hard_negative_loss(rows.student, rows.teacher, rows.ids, margin, hardest, mask_same_item)
            )
        else:
            if queues is None:
                raise ValueError("u_cd needs the unpaired queues (build the loss with u_cd enabled)")
            queue, queue_ids = queues.of(modality).valid()
            terms.append(
                unpaired_contrastive_loss(
                    rows.student, rows.teacher, rows.ids, queue, queue_ids, temperature, mask_same_item
                )
            )
    return sum(terms[1:], terms[0])


__all__ = [
    "UNPAIRED_LOSS_NAMES",
    "UnpairedFeatures",
    "UnpairedRows",
    "teacher_nearest",
    "unpaired_contrastive_loss",
    "unpaired_feature_loss",
    "unpaired_hard_negative_loss",
    "unpaired_loss",
    "unpaired_similarity_loss",
]
