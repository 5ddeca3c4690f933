"""The DSMD distillation losses (docs/method.md "The four distillation losses").

Each loss is a function of ``(B, D)`` student and teacher features that returns a scalar;
:class:`MultiscaleDistillationLoss` computes the enabled ones by name and owns the
:class:`FeatureQueue` of teacher features that contrastive distillation draws negatives from.
"""

from dsmd.losses.contrastive import contrastive_distillation_loss
from dsmd.losses.feature import feature_distillation_loss
from dsmd.losses.hard_negative import hard_negative_distillation_loss
from dsmd.losses.multiscale import LOSS_NAMES, MultiscaleDistillationLoss
from dsmd.losses.queue import FeatureQueue
from dsmd.losses.similarity import similarity_distillation_loss

__all__ = [
    "LOSS_NAMES",
    "FeatureQueue",
    "MultiscaleDistillationLoss",
    "contrastive_distillation_loss",
    "feature_distillation_loss",
    "hard_negative_distillation_loss",
    "similarity_distillation_loss",
]
