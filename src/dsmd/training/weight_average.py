"""An exponential moving average of the student's weights (``train.ema_decay``).

After every optimiser step ``w_avg <- d * w_avg + (1 - d) * w``, for every parameter and buffer
(BatchNorm's running statistics included); the first step copies ``w``. The averaging is
:class:`torch.optim.swa_utils.AveragedModel` with :func:`~torch.optim.swa_utils.get_ema_multi_avg_fn`.

With it, the averaged student is the run's product: validation scores it, ``best.pt`` is chosen
by its RSUM, and a checkpoint's ``model`` holds its weights (what ``dsmd eval``, ``dsmd export``
and :func:`dsmd.load_student` read). The weights the optimiser trains travel beside them as
``train_model``, with the number of averaged steps as ``ema_updates``, so ``--resume`` continues
both exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from dsmd.training.checkpoint import load_weights


def weight_average(student: nn.Module, decay: float | None) -> AveragedModel | None:
    """The moving average of ``student`` (None when ``decay`` is None), on its device, in eval mode."""
    if decay is None:
        return None
    average = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    return average.eval()


def average_state(average: AveragedModel | None, student: nn.Module) -> dict[str, Any]:
    """A checkpoint's weights: ``model`` (the average when there is one) and, with an average,
    ``train_model`` and ``ema_updates``."""
    if average is None:
        return {"model": student.state_dict()}
    return {
        "model": average.module.state_dict(),
        "train_model": student.state_dict(),
        "ema_updates": int(average.n_averaged.item()),
    }


def restore_average(average: AveragedModel | None, student: nn.Module, state: dict[str, Any], where: str) -> None:
    """Load a checkpoint's weights into ``student`` (and ``average``).

    A checkpoint written with an average gives the student its ``train_model``; one written
    without gives it ``model``, and an average turned on at resume starts from there.
    """
    load_weights(student, state.get("train_model", state["model"]), where)
    if average is None:
        return
    if "train_model" in state:
        load_weights(average.module, state["model"], where)
        average.n_averaged.fill_(int(state["ema_updates"]))
    else:
        average.n_averaged.zero_()  # the next update copies the student


@torch.no_grad()
def update_average(average: AveragedModel | None, student: nn.Module) -> None:
    """One step of the average (nothing without one)."""
    if average is not None:
        average.update_parameters(student)
