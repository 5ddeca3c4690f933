"""One DSMD optimiser step, the same code for one process and for many.

Per micro-batch (:meth:`DistillationStep.micro_batch`): the student encodes this rank's part
(under autocast for ``bf16``/``fp16``); its features, cast to float32, and the teacher's rows
of the same pairs are gathered from all ranks, so the losses, their hard negatives, the
contrastive negatives and the balancer's inputs are those of the whole (global) micro-batch,
exactly as one process computes them; the balanced objective, divided by
``grad_accum_steps``, is back-propagated; the micro-batch's gathered teacher features enter
the queue (identical on every rank).

Gradient accumulation: ``grad_accum_steps = N`` splits each step's ``batch_size`` pairs into N
micro-batches of ``batch_size / N``, and each micro-batch is a DSMD batch of its own: its
in-batch negatives (HND) are the pairs of that micro-batch, its CD negatives the queue, which
already holds the earlier micro-batches of the step (teacher features do not depend on the
student, so enqueuing before the optimiser step changes nothing else), and the balancer takes
one step per micro-batch. The optimiser steps once per N micro-batches on the mean of their
gradients. A run with ``(batch_size=B, grad_accum_steps=N)`` therefore sees the same
batches, queue and balancer states as one with ``(B/N, 1)``; only the optimiser steps N times
less often, on averaged gradients. A short last step of an epoch (k < N micro-batches) is
the mean of its k gradients.

Unpaired data (a :class:`~dsmd.data.unpaired_batches.MixedBatch`, with ``u_*`` losses): the
micro-batch's unpaired images and captions go through the student in the same forward pass as
the pairs (appended to the pairs' images and captions), are gathered like them, and their
losses join the balancer's; their teacher features enter the unpaired queues. A plain
:class:`~dsmd.data.batches.PairBatch` runs exactly as without unpaired data.

:meth:`DistillationStep.optimizer_step` unscales (fp16), clips the gradient norm
(``clip_grad_norm``) and steps.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from dsmd.config import TrainConfig
from dsmd.data.batches import PairBatch
from dsmd.data.unpaired_batches import MixedBatch, UnpairedBatch, concat_tokens
from dsmd.errors import DsmdError
from dsmd.losses import UnpairedFeatures, UnpairedRows
from dsmd.runtime.distributed import Distributed

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Diverged(DsmdError):
    """Training produced a non-finite loss or weight at optimiser step ``step`` (1-based); the
    recipe adds what to do (:func:`dsmd.training.recipe.diverged`)."""

    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"training diverged at step {step}: {what}.")
        self.step, self.what = step, what


def non_finite_weights(module: torch.nn.Module) -> list[str]:
    """The names of ``module``'s parameters and floating buffers that hold NaN or inf (one device
    sync when there are none)."""
    tensors = [(n, t) for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_floating_point()]
    if not tensors or bool(torch.stack([torch.isfinite(t).all() for _, t in tensors]).all()):
        return []
    return [name for name, t in tensors if not bool(torch.isfinite(t).all())]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.precision`` on ``device`` (None: fp32).

    Raises:
        DsmdError: an unknown precision, or one the device cannot run.
    """
    if precision not in PRECISIONS:
        raise DsmdError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return None
    unsupported = DsmdError(
        f"train.precision={precision} is not supported on {device} by this PyTorch "
        f"({torch.__version__}). Use train.precision=fp32"
        f"{' or bf16' if precision == 'fp16' else ''}, or another device."
    )
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise unsupported
    try:
        with warnings.catch_warnings(), torch.autocast(device.type, dtype=dtype):
            warnings.simplefilter("ignore")  # an unsupported dtype only warns and disables autocast
            probe = nn.functional.linear(torch.ones(2, 2, device=device), torch.ones(2, 2, device=device))
    except (RuntimeError, ValueError) as exc:
        raise unsupported from exc
    if probe.dtype != dtype:
        raise unsupported
    return dtype


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """The torch seed of micro-batch ``micro`` of optimiser step ``step`` on ``rank``: dropout
    masks follow from the position alone, so a resumed run draws the same ones."""
    return (((seed * 1_000_003 + step) * 1_009 + micro) * 65_537 + rank) % 2**63


class DistillationStep:
    """One optimiser step of DSMD over its micro-batches (see the module docstring).

    Calling it with a step's micro-batches (:func:`~dsmd.training.batches.optimizer_steps`)
    runs each (seeded by its position), steps the optimiser and returns the step's log record.
    It counts the optimiser steps (:attr:`steps`, restored on resume) and owns the gradient
    scaler.

    Args:
        student: the bare :class:`~dsmd.models.student.DualEncoder`.
        model: what :func:`~dsmd.training.setup.wrap_student` returned (runs the forward pass).
        objective: :class:`~dsmd.losses.MultiscaleDistillationLoss`, holding the queue.
        balancer: :class:`~dsmd.balancer.LossBalancer`.
        optimizer: over the student's parameters.
        ctx: this rank's :class:`~dsmd.runtime.distributed.Distributed`.
        cfg: ``train`` section (seed, precision, grad_accum_steps, clip_grad_norm).
        steps: optimiser steps already taken (a resumed run).
    """

    def __init__(
        self, student, model, objective, balancer, optimizer, ctx: Distributed, cfg: TrainConfig, steps: int = 0
    ):
        self.student, self.model, self.objective = student, model, objective
        self.balancer, self.optimizer, self.ctx = balancer, optimizer, ctx
        self.dtype = autocast_dtype(cfg.precision, ctx.device)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.dtype == torch.float16)
        self.accum, self.clip, self.seed = cfg.grad_accum_steps, cfg.clip_grad_norm, cfg.seed
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.steps = steps

    def __call__(self, micro_batches: Iterable[tuple[PairBatch | MixedBatch, bool]]) -> dict[str, float]:
        """Run one optimiser step over ``(micro-batch, last)`` pairs; returns its log record."""
        sums: dict[str, float] = {}
        count = 0
        for micro, (batch, last) in enumerate(micro_batches):
            torch.manual_seed(step_seed(self.seed, self.steps, micro, self.ctx.rank))
            for name, value in self.micro_batch(batch, sync=last).items():
                sums[name] = sums.get(name, 0.0) + value
            count += 1
        if count == 0:
            raise RuntimeError("an optimiser step needs at least one micro-batch")
        record = {name: value / count for name, value in sums.items()}
        record.update(self.optimizer_step(count))
        return record

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.dtype)

    def _gather(
        self, student: torch.Tensor, teacher: torch.Tensor, image_ids: torch.Tensor, real: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The micro-batch's real rows from all ranks, in rank order.

        Args:
            student: ``(m, 2, D)`` float32 (image, text), with its graph; ``m`` is the same on
                every rank (:func:`~dsmd.training.batches.synchronised` pads).
            teacher: ``(m, 2, D)`` float32.
            image_ids, real: ``(m,)`` int64 and bool.

        Returns:
            ``student (n, 2, D)``, ``teacher (n, 2, D)``, ``image_ids (n,)``.
        """
        ints = torch.stack([image_ids, real.long()], dim=1)
        if self.ctx.enabled:
            student = self.ctx.gather_rows(student, with_grad=True)
            teacher = self.ctx.gather_rows(teacher)
            ints = self.ctx.gather_rows(ints)
        if not bool(ints[:, 1].all()):
            keep = ints[:, 1].nonzero().squeeze(1)
            student, teacher, ints = student[keep], teacher[keep], ints[keep]
        return student, teacher, ints[:, 0]

    def _encode(
        self, batch: PairBatch, unpaired: UnpairedBatch | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The student's ``(image (m, D), text (m, D))`` of the pairs and, with ``unpaired``, of
        its images ``(B_v, D)`` and captions ``(B_t, D)`` (None without), in one forward pass."""
        if unpaired is None:
            student_image, student_text = self.model(batch.pixel_values, batch.input_ids, batch.attention_mask)
            return student_image, student_text, None, None
        pixels = batch.pixel_values
        if unpaired.pixel_values is not None:
            pixels = torch.cat([pixels, unpaired.pixel_values])
        tokens = (batch.input_ids, batch.attention_mask)
        if unpaired.input_ids is not None:
            tokens = concat_tokens(tokens, (unpaired.input_ids, unpaired.attention_mask), unpaired.pad_id)
        image, text = self.model(pixels, *tokens)
        m = len(batch)
        extra_image = image[m:] if unpaired.pixel_values is not None else None
        extra_text = text[m:] if unpaired.input_ids is not None else None
        return image[:m], text[:m], extra_image, extra_text

    def _gather_unpaired(
        self, unpaired: UnpairedBatch, image: torch.Tensor | None, text: torch.Tensor | None
    ) -> UnpairedFeatures:
        """The micro-batch's unpaired rows from all ranks, in rank order (each rank holds as many)."""

        def rows(student, teacher, index) -> UnpairedRows | None:
            if student is None:
                return None
            student = student.float()
            if self.ctx.enabled:
                student = self.ctx.gather_rows(student, with_grad=True)
                teacher, index = self.ctx.gather_rows(teacher), self.ctx.gather_rows(index)
            return UnpairedRows(student, teacher, index)

        return UnpairedFeatures(
            rows(image, unpaired.teacher_image, unpaired.image_index),
            rows(text, unpaired.teacher_text, unpaired.text_index),
        )

    def micro_batch(self, batch: PairBatch | MixedBatch, sync: bool = True) -> dict[str, float]:
        """Forward, losses and backward of one micro-batch; its teacher features enter the queue.

        Args:
            batch: this rank's part of the micro-batch, carrying its teacher targets (with its
                unpaired items: a :class:`~dsmd.data.unpaired_batches.MixedBatch`).
            sync: all-reduce gradients in this backward (False: DDP's ``no_sync``, for all but
                the last micro-batch of a step).

        Returns:
            The balanced ``total`` and each raw loss, as floats.

        Raises:
            DsmdError: a loss is NaN or inf.
        """
        batch, unpaired = (batch.pairs, batch.unpaired) if isinstance(batch, MixedBatch) else (batch, None)
        non_blocking = self.ctx.device.type == "cuda"
        batch = batch.to(self.ctx.device, non_blocking=non_blocking)
        unpaired = unpaired.to(self.ctx.device, non_blocking=non_blocking) if unpaired is not None else None
        no_sync = getattr(self.model, "no_sync", None)
        with self.ctx.guard("a training step"), contextlib.nullcontext() if sync or no_sync is None else no_sync():
            with self._autocast():
                student_image, student_text, extra_image, extra_text = self._encode(batch, unpaired)
            local_student = torch.stack([student_image.float(), student_text.float()], dim=1)
            local_teacher = torch.stack([batch.teacher_image, batch.teacher_text], dim=1)
            student, teacher, image_ids = self._gather(local_student, local_teacher, batch.image_index, batch.real)
            extra = {} if unpaired is None else {"unpaired": self._gather_unpaired(unpaired, extra_image, extra_text)}
            losses = self.objective(student[:, 0], student[:, 1], teacher[:, 0], teacher[:, 1], image_ids, **extra)
            raw = {name: float(value.detach()) for name, value in losses.items()}
            if not all(math.isfinite(v) for v in raw.values()):
                raise Diverged(self.steps + 1, f"losses {raw}")
            total, _ = self.balancer(losses)
            values = {"total": float(total.detach()), **raw}
            self.scaler.scale(total / self.accum).backward()
        self.objective.update_queue(teacher[:, 0], teacher[:, 1], image_ids)
        if extra:
            self.objective.update_unpaired_queues(extra["unpaired"])
        return values

    def optimizer_step(self, micro_batches: int) -> dict[str, float]:
        """Step on the mean gradient of the step's ``micro_batches`` micro-batches.

        Returns:
            The balancer's record of the last micro-batch, ``grad_norm`` (before clipping; inf
            or nan when fp16 overflowed and the step was skipped) and, with accumulation,
            ``micro_batches``.
        """
        if micro_batches < self.accum:  # a short last step: the mean of the gradients it has
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(self.accum / micro_batches)
        self.scaler.unscale_(self.optimizer)  # (no collective from here on: DDP all-reduced in backward)
        grads = [p for p in self.params if p.grad is not None]
        if self.clip is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(grads, self.clip))
        else:
            norm = (
                float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in grads])))
                if grads
                else 0.0
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        bad = non_finite_weights(self.student)
        if bad:
            raise Diverged(
                self.steps, f"the optimiser step left NaN or inf in {len(bad)} weights ({', '.join(bad[:3])})"
            )
        record = dict(self.balancer.log_record())
        record["grad_norm"] = norm
        if self.accum > 1:
            record["micro_batches"] = micro_batches
        return record

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
