"""The DSMD distillation losses (docs/method.md "The four distillation losses"), the
baselines they are compared with (docs/method.md "Baseline distillers") and their forms for
unpaired images and captions (docs/method.md "Unpaired data").

Each loss is a function of ``(B, D)`` student and teacher features that returns a scalar;
:class:`MultiscaleDistillationLoss` computes the enabled ones by name and owns the
:class:`FeatureQueue` of teacher features that contrastive distillation draws negatives from.
"""

from dsmd.losses.baselines import hint_loss, kd_loss, rkd_loss
from dsmd.losses.contrastive import contrastive_distillation_loss
from dsmd.losses.contrastive_baselines import clip_loss, dcd_loss, interactive_contrastive_loss
from dsmd.losses.feature import feature_distillation_loss
from dsmd.losses.hard_negative import hard_negative_distillation_loss
from dsmd.losses.multiscale import ALL_LOSS_NAMES, BASELINE_LOSS_NAMES, LOSS_NAMES, MultiscaleDistillationLoss
from dsmd.losses.queue import FeatureQueue
from dsmd.losses.similarity import similarity_distillation_loss
from dsmd.losses.unpaired import (
    UNPAIRED_LOSS_NAMES,
    UnpairedFeatures,
    UnpairedRows,
    unpaired_contrastive_loss,
    unpaired_feature_loss,
    unpaired_hard_negative_loss,
    unpaired_similarity_loss,
)

__all__ = [
    "ALL_LOSS_NAMES",
    "BASELINE_LOSS_NAMES",
    "LOSS_NAMES",
    "UNPAIRED_LOSS_NAMES",
    "UnpairedFeatures",
    "UnpairedRows",
    "FeatureQueue",
    "MultiscaleDistillationLoss",
    "clip_loss",
    "contrastive_distillation_loss",
    "dcd_loss",
    "feature_distillation_loss",
    "hard_negative_distillation_loss",
    "hint_loss",
    "interactive_contrastive_loss",
    "kd_loss",
    "rkd_loss",
    "similarity_distillation_loss",
    "unpaired_contrastive_loss",
    "unpaired_feature_loss",
    "unpaired_hard_negative_loss",
    "unpaired_similarity_loss",
]
