"""The four DSMD losses together, with the contrastive queue they need."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from dsmd.losses.contrastive import contrastive_distillation_loss
from dsmd.losses.feature import check_features, feature_distillation_loss
from dsmd.losses.hard_negative import hard_negative_distillation_loss
from dsmd.losses.queue import FeatureQueue
from dsmd.losses.similarity import similarity_distillation_loss

LOSS_NAMES = ("cd", "fd", "sd", "hnd")


class MultiscaleDistillationLoss(nn.Module):
    """Computes the enabled DSMD losses (docs/method.md) and owns the contrastive queue.

    The losses are returned raw and by name; weighting them is the loss balancer's job.
    The queue exists only when ``"cd"`` is enabled; it is part of this module's
    ``state_dict()``, so checkpoints carry it.

    Args:
        dim: feature width D of teacher and (projected) student features.
        losses: the enabled losses, a non-empty subset of ``("cd", "fd", "sd", "hnd")``.
        temperature: tau of CD (paper: 0.05).
        queue_size: K, the number of queued teacher pairs for CD (paper: 8192; 0 leaves CD
            without negatives, so it is identically 0).
        margin: alpha of HND (paper: 0).
        hardest: HND takes the hardest negative (true) or sums over all (false).
        mask_same_image: pairs of the same image are never negatives in CD and HND.
        cross_modal: add the cross-modal CD terms.

    Raises:
        ValueError: an unknown or repeated loss name, no loss, ``temperature <= 0``,
            ``queue_size < 0``, ``margin < 0`` or ``dim < 1``.
    """

    def __init__(
        self,
        dim: int,
        losses: Sequence[str] = LOSS_NAMES,
        temperature: float = 0.05,
        queue_size: int = 8192,
        margin: float = 0.0,
        hardest: bool = True,
        mask_same_image: bool = True,
        cross_modal: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(losses, str):
            # A bare string would be read as its letters.
            raise ValueError(f"losses must be a list of names, got the string {losses!r}")
        losses = tuple(losses)
        if not losses:
            raise ValueError(f"enable at least one loss out of {', '.join(LOSS_NAMES)}")
        unknown = [name for name in losses if name not in LOSS_NAMES]
        if unknown:
            raise ValueError(f"unknown loss {', '.join(map(repr, unknown))}; choose from {', '.join(LOSS_NAMES)}")
        if len(set(losses)) != len(losses):
            raise ValueError(f"losses lists a name twice: {list(losses)}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 0:
            raise ValueError(f"queue_size must be an integer >= 0, got {queue_size!r}")
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.dim = dim
        self.losses = losses
        self.temperature = float(temperature)
        self.margin = float(margin)
        self.hardest = bool(hardest)
        self.mask_same_image = bool(mask_same_image)
        self.cross_modal = bool(cross_modal)
        self.queue = FeatureQueue(queue_size, dim) if "cd" in losses else None

    @classmethod
    def from_config(cls, cfg: Any, dim: int) -> MultiscaleDistillationLoss:
        """Build from a :class:`dsmd.config.LossConfig` (or any object with its attributes)."""
        return cls(
            dim,
            losses=tuple(cfg.losses),
            temperature=cfg.temperature,
            queue_size=cfg.queue_size,
            margin=cfg.margin,
            hardest=cfg.hardest,
            mask_same_image=cfg.mask_same_image,
            cross_modal=cfg.cross_modal,
        )

    def forward(
        self,
        student_image: Tensor,
        student_text: Tensor,
        teacher_image: Tensor,
        teacher_text: Tensor,
        image_ids: Tensor,
    ) -> dict[str, Tensor]:
        """The enabled losses of one batch. CD uses the queue as it is before this batch.

        Args:
            student_image: ``(B, D)`` student image features.
            student_text: ``(B, D)`` student text features.
            teacher_image: ``(B, D)`` teacher image features (no gradient).
            teacher_text: ``(B, D)`` teacher text features (no gradient).
            image_ids: ``(B,)`` image id of each pair.

        Returns:
            Scalar losses keyed by name (``"cd"``, ``"fd"``, ``"sd"``, ``"hnd"``), in the
            order of ``self.losses``.
        """
        _, dim = check_features(
            image_ids,
            student_image=student_image,
            student_text=student_text,
            teacher_image=teacher_image,
            teacher_text=teacher_text,
        )
        if dim != self.dim:
            raise ValueError(f"features are {dim}-dimensional but the loss was built for {self.dim}")
        features = (student_image, student_text, teacher_image, teacher_text)
        out: dict[str, Tensor] = {}
        for name in self.losses:
            if name == "cd":
                assert self.queue is not None
                queue_image, queue_text, queue_ids = self.queue.valid()
                out[name] = contrastive_distillation_loss(
                    *features,
                    image_ids,
                    queue_image,
                    queue_text,
                    queue_ids,
                    temperature=self.temperature,
                    mask_same_image=self.mask_same_image,
                    cross_modal=self.cross_modal,
                )
            elif name == "fd":
                out[name] = feature_distillation_loss(*features)
            elif name == "sd":
                out[name] = similarity_distillation_loss(*features)
            else:
                out[name] = hard_negative_distillation_loss(
                    *features,
                    image_ids,
                    margin=self.margin,
                    hardest=self.hardest,
                    mask_same_image=self.mask_same_image,
                )
        return out

    def update_queue(self, teacher_image: Tensor, teacher_text: Tensor, image_ids: Tensor) -> None:
        """Enqueue a batch's teacher features, once its losses are computed (no-op without CD).

        The training step (:meth:`dsmd.training.step.DistillationStep.micro_batch`) calls it
        right after each micro-batch's backward pass, before the optimiser step, so the next
        micro-batch already has this one's pairs as negatives. That is equivalent to enqueuing
        after the step: teacher features do not depend on the student.

        Under data parallelism pass the features gathered from all ranks, so every rank's
        queue stays identical.

        Args:
            teacher_image: ``(B, D)`` teacher image features.
            teacher_text: ``(B, D)`` teacher text features.
            image_ids: ``(B,)`` image ids.
        """
        if self.queue is not None:
            self.queue.enqueue(teacher_image, teacher_text, image_ids)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, losses={list(self.losses)}, temperature={self.temperature}, "
            f"margin={self.margin}, hardest={self.hardest}, "
            f"mask_same_image={self.mask_same_image}, cross_modal={self.cross_modal}"
        )


__all__ = ["LOSS_NAMES", "MultiscaleDistillationLoss"]
