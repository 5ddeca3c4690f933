"""Training: the recipe (:func:`~dsmd.training.recipe.train`), its set-up, the step, batches
and sampling, checkpoints and run files."""

from dsmd.training.checkpoint import load_checkpoint, student_from_checkpoint
from dsmd.training.recipe import TrainResult, train

__all__ = ["TrainResult", "load_checkpoint", "student_from_checkpoint", "train"]
