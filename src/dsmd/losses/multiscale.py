"""The enabled losses together (DSMD's four, the baselines and the unpaired losses), with the
contrastive queues CD and ``u_cd`` need."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from dsmd.losses.baselines import hint_loss, kd_loss, rkd_loss
from dsmd.losses.contrastive import contrastive_distillation_loss
from dsmd.losses.contrastive_baselines import clip_loss, dcd_loss, interactive_contrastive_loss
from dsmd.losses.feature import check_features, feature_distillation_loss
from dsmd.losses.hard_negative import hard_negative_distillation_loss
from dsmd.losses.queue import FeatureQueue
from dsmd.losses.similarity import similarity_distillation_loss
from dsmd.losses.unpaired import UNPAIRED_LOSS_NAMES, UnpairedFeatures, unpaired_loss
from dsmd.losses.unpaired_queue import UnpairedQueues

LOSS_NAMES = ("cd", "fd", "sd", "hnd")
BASELINE_LOSS_NAMES = ("kd", "hint", "rkd", "icl", "clip", "dcd")
ALL_LOSS_NAMES = LOSS_NAMES + BASELINE_LOSS_NAMES + UNPAIRED_LOSS_NAMES


BASELINE_DEFAULTS: dict[str, float] = {
    "kd_temperature": 0.05,
    "contrastive_temperature": 0.07,
    "rkd_distance_weight": 1.0,
    "rkd_angle_weight": 2.0,
    "dcd_negatives": 8,
}


class MultiscaleDistillationLoss(nn.Module):
    """Computes the enabled losses (docs/method.md) and owns the contrastive queue.

    The losses are returned raw and by name; weighting them is the loss balancer's job.
    The queue exists only when ``"cd"`` is enabled, the unpaired items' queues
    (:class:`~dsmd.losses.unpaired_queue.UnpairedQueues`, of ``queue_size`` each) only when
    ``"u_cd"`` is; they are part of this module's ``state_dict()``, so checkpoints carry them.

    Args:
        dim: feature width D of teacher and (projected) student features.
        losses: the enabled losses, a non-empty subset of ``ALL_LOSS_NAMES``: DSMD's
            ``cd fd sd hnd``, the baselines ``kd hint rkd icl clip dcd`` and the unpaired losses
            ``u_cd u_fd u_sd u_hnd`` (docs/method.md "Unpaired data"; ``temperature``, ``margin``,
            ``hardest`` and ``mask_same_image`` apply to them too).
        temperature: tau of CD (paper: 0.05).
        queue_size: K, the number of queued teacher pairs for CD (paper: 8192; 0 leaves CD
            without negatives, so it is identically 0).
        margin: alpha of HND (paper: 0).
        hardest: HND takes the hardest negative (true) or sums over all (false).
        mask_same_image: pairs of the same image are never negatives in CD and HND.
        cross_modal: add the cross-modal CD terms.
        baseline_options: keyword arguments of the baselines: ``kd_temperature``,
            ``contrastive_temperature`` (ICL, CLIP, DCD), ``rkd_distance_weight``,
            ``rkd_angle_weight``, ``dcd_negatives``.

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
        **baseline_options: float,
    ) -> None:
        super().__init__()
        if isinstance(losses, str):
            # A bare string would be read as its letters.
            raise ValueError(f"losses must be a list of names, got the string {losses!r}")
        losses = tuple(losses)
        if not losses:
            raise ValueError(f"enable at least one loss out of {', '.join(ALL_LOSS_NAMES)}")
        unknown = [name for name in losses if name not in ALL_LOSS_NAMES]
        if unknown:
            raise ValueError(f"unknown loss {', '.join(map(repr, unknown))}; choose from {', '.join(ALL_LOSS_NAMES)}")
        options = {**BASELINE_DEFAULTS, **baseline_options}
        if set(options) != set(BASELINE_DEFAULTS):
            raise ValueError(f"unknown baseline options {sorted(set(options) - set(BASELINE_DEFAULTS))}")
        if not (options["kd_temperature"] > 0 and options["contrastive_temperature"] > 0):
            raise ValueError("kd_temperature and contrastive_temperature must be > 0")
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
        self.options = options
        self.queue = FeatureQueue(queue_size, dim) if "cd" in losses else None
        self.unpaired_queues = UnpairedQueues(queue_size, dim) if "u_cd" in losses else None

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
            **{key: getattr(cfg, key) for key in BASELINE_DEFAULTS},
        )

    def forward(
        self,
        student_image: Tensor,
        student_text: Tensor,
        teacher_image: Tensor,
        teacher_text: Tensor,
        image_ids: Tensor,
        unpaired: UnpairedFeatures | None = None,
    ) -> dict[str, Tensor]:
        """The enabled losses of one batch. CD (and ``u_cd``) use the queues as they are before this batch.

        Args:
            student_image: ``(B, D)`` student image features.
            student_text: ``(B, D)`` student text features.
            teacher_image: ``(B, D)`` teacher image features (no gradient).
            teacher_text: ``(B, D)`` teacher text features (no gradient).
            image_ids: ``(B,)`` image id of each pair.
            unpaired: the step's unpaired images and captions (needed by the ``u_*`` losses).

        Returns:
            Scalar losses keyed by name (``"cd"``, ``"fd"``, ...), in the order of ``self.losses``.
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
        return {
            name: self._unpaired(name, unpaired)
            if name in UNPAIRED_LOSS_NAMES
            else self._loss(name, features, image_ids)
            for name in self.losses
        }

    def _unpaired(self, name: str, unpaired: UnpairedFeatures | None) -> Tensor:
        """One ``u_*`` loss of the step's unpaired batches (:func:`~dsmd.losses.unpaired.unpaired_loss`)."""
        if unpaired is None:
            raise ValueError(f"{name} needs the step's unpaired images or captions (unpaired=...)")
        return unpaired_loss(
            name, unpaired, self.unpaired_queues, self.temperature, self.margin, self.hardest, self.mask_same_image
        )

    def _loss(self, name: str, features: tuple[Tensor, Tensor, Tensor, Tensor], image_ids: Tensor) -> Tensor:
        """One loss by name; ``features`` is ``(S^v, S^t, T^v, T^t)``, each ``(B, D)``."""
        o = self.options
        if name == "cd":
            assert self.queue is not None
            queue_image, queue_text, queue_ids = self.queue.valid()
            return contrastive_distillation_loss(
                *features,
                image_ids,
                queue_image,
                queue_text,
                queue_ids,
                temperature=self.temperature,
                mask_same_image=self.mask_same_image,
                cross_modal=self.cross_modal,
            )
        if name == "hnd":
            return hard_negative_distillation_loss(
                *features, image_ids, margin=self.margin, hardest=self.hardest, mask_same_image=self.mask_same_image
            )
        if name == "fd":
            return feature_distillation_loss(*features)
        if name == "sd":
            return similarity_distillation_loss(*features)
        if name == "kd":
            return kd_loss(*features, temperature=o["kd_temperature"])
        if name == "hint":
            return hint_loss(*features)
        if name == "rkd":
            return rkd_loss(*features, distance_weight=o["rkd_distance_weight"], angle_weight=o["rkd_angle_weight"])
        if name == "icl":
            return interactive_contrastive_loss(*features, image_ids, temperature=o["contrastive_temperature"])
        if name == "clip":
            return clip_loss(features[0], features[1], image_ids, temperature=o["contrastive_temperature"])
        return dcd_loss(
            *features, image_ids, temperature=o["contrastive_temperature"], negatives=int(o["dcd_negatives"])
        )

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

    def update_unpaired_queues(self, unpaired: UnpairedFeatures) -> None:
        """Enqueue the teacher features of a step's unpaired items, each modality into its own
        queue, once the losses are computed (no-op without ``u_cd``; gathered from all ranks under
        data parallelism, like :meth:`update_queue`)."""
        if self.unpaired_queues is not None:
            for modality, rows in unpaired.present():
                self.unpaired_queues.of(modality).enqueue(rows.teacher, rows.ids)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, losses={list(self.losses)}, temperature={self.temperature}, "
            f"margin={self.margin}, hardest={self.hardest}, "
            f"mask_same_image={self.mask_same_image}, cross_modal={self.cross_modal}, options={self.options}"
        )


__all__ = ["ALL_LOSS_NAMES", "BASELINE_LOSS_NAMES", "LOSS_NAMES", "MultiscaleDistillationLoss"]
