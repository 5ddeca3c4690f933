"""Small stand-ins for the training unit tests: a two-linear-layer "student", batches, a
process group of one or several simulated ranks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsmd.balancer import LossBalancer
from dsmd.config import TrainConfig
from dsmd.data.batches import PairBatch
from dsmd.losses import MultiscaleDistillationLoss
from dsmd.runtime.distributed import Distributed
from dsmd.training.step import DistillationStep

DIM = 6


class TinyStudent(nn.Module):
    """Images ``(B, 3, 2, 2)`` and token ids ``(B, L)`` to unit features ``(B, DIM)``, with dropout."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.image = nn.Linear(12, DIM)
        self.text = nn.EmbeddingBag(20, DIM, mode="sum")
        self.dropout = nn.Dropout(dropout)

    def forward(self, pixels, input_ids, attention_mask):
        image = self.dropout(self.image(pixels.flatten(1)))
        text = self.text(input_ids, per_sample_weights=attention_mask.float())
        return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


def batch(seed: int, rows: int = 4, image_ids: list[int] | None = None) -> PairBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor(image_ids if image_ids is not None else [seed * 10 + i for i in range(rows)])
    return PairBatch(
        pixel_values=torch.randn(rows, 3, 2, 2, generator=g),
        input_ids=torch.randint(0, 20, (rows, 3), generator=g),
        attention_mask=torch.ones(rows, 3, dtype=torch.long),
        caption_index=torch.arange(rows),
        image_index=ids,
        view_index=torch.zeros(rows, dtype=torch.long),
        teacher_image=F.normalize(torch.randn(rows, DIM, generator=g), dim=-1),
        teacher_text=F.normalize(torch.randn(rows, DIM, generator=g), dim=-1),
        real=torch.ones(rows, dtype=torch.bool),
    )


def stepper(
    accum: int = 1, lr: float = 0.0, dropout: float = 0.0, seed: int = 0, losses=("cd", "fd", "sd", "hnd")
) -> DistillationStep:
    student = TinyStudent(dropout)
    objective = MultiscaleDistillationLoss(DIM, losses=losses, queue_size=8)
    balancer = LossBalancer(list(losses))
    optimizer = torch.optim.AdamW([{"params": list(student.parameters()), "lr_scale": 1.0}], lr=lr)
    cfg = TrainConfig(lr=lr, grad_accum_steps=accum, batch_size=4 * accum, seed=seed)
    return DistillationStep(student, student, objective, balancer, optimizer, Distributed(), cfg)


def record_gradients(step: DistillationStep) -> list[list[torch.Tensor]]:
    """The gradients the optimiser sees at each of ``step``'s optimiser steps."""
    seen: list[list[torch.Tensor]] = []
    real = step.optimizer.step

    def capture(*args, **kwargs):
        seen.append([p.grad.clone() for group in step.optimizer.param_groups for p in group["params"]])
        return real(*args, **kwargs)

    step.optimizer.step = capture
    return seen


class FakeRanks(Distributed):
    """Rank 0 of a simulated group: each ``gather_counts`` call answers with this rank's counts
    followed by the other ranks' next ``(rows, real)`` from ``others`` (one list per call)."""

    def __init__(self, others: list[list[tuple[int, int]]], world_size: int):
        super().__init__(rank=0, world_size=world_size)
        self.others = list(others)

    def gather_counts(self, rows: int, real: int) -> list[tuple[int, int]]:
        return [(rows, real), *self.others.pop(0)]
