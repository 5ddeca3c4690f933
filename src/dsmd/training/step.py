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

:meth:`DistillationStep.optimizer_step` unscales (fp16), clips the gradient norm
(``clip_grad_norm``) and steps.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import torch
from torch import nn

from dsmd.config import TrainConfig
from dsmd.errors import DsmdError
from dsmd.training.distributed import Distributed

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    unsupported = DsmdError(f"train.precision={precision} is not supported on {device} by this PyTorch "
                            f"({torch.__version__}). Use train.precision=fp32"
                            f"{' or bf16' if precision == 'fp16' else ''}, or another device.")
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


def enable_gradient_checkpointing(student: nn.Module, log: Callable[[str], None]) -> list[str]:
    """Recompute the transformers towers' activations in the backward pass (less memory).

    Towers that cannot (EfficientNet) run as they are, with a log line.

    Returns:
        The towers switched to checkpointing (``"vision"``, ``"text"``).
    """
    done = []
    for name in ("vision", "text"):
        model = getattr(getattr(student, name), "model", None)
        if model is not None and getattr(model, "supports_gradient_checkpointing", False):
            # Non-reentrant: works with DDP and with inputs that need no gradient. transformers
            # renamed the switch (the old name warns); either takes torch.utils.checkpoint's kwargs.
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            done.append(name)
        else:
            log(f"train.grad_checkpointing: the {name} tower ({type(getattr(student, name)).__name__}) "
                "does not support it; it runs without")
    return done


def wrap_student(student: nn.Module, ctx: Distributed, compile_: bool) -> nn.Module:
    """The module the loop calls: ``student``, optionally compiled, in DDP under torchrun.

    ``student`` itself stays the one to save, evaluate and tokenize with: it shares its
    parameters with the wrapper.
    """
    model = torch.compile(student) if compile_ else student
    if ctx.enabled:
        with ctx.guard("starting DDP (broadcasting rank 0's parameters)"):
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=False)
    return model


class DistillationStep:
    """Micro-batches and optimiser steps of DSMD (see the module docstring).

    Args:
        student: the bare :class:`~dsmd.models.student.DualEncoder` (tokenizes).
        model: what :func:`wrap_student` returned (runs the forward pass).
        objective: :class:`~dsmd.losses.MultiscaleDistillationLoss`, holding the queue.
        balancer: :class:`~dsmd.balancer.LossBalancer`.
        optimizer: over the student's parameters.
        features: the training split's :class:`~dsmd.store.feature_store.SplitFeatures` (None:
            every batch carries its teacher rows, ``teacher_image`` and ``teacher_text``, as
            with ``data.teacher_in_shards``; batches that carry them use them either way).
        ctx: this rank's :class:`~dsmd.training.distributed.Distributed`.
        cfg: ``train`` section (precision, grad_accum_steps, clip_grad_norm).
    """

    def __init__(self, student, model, objective, balancer, optimizer, features, ctx: Distributed,
                 cfg: TrainConfig):
        self.student, self.model, self.objective = student, model, objective
        self.balancer, self.optimizer, self.features, self.ctx = balancer, optimizer, features, ctx
        self.dtype = autocast_dtype(cfg.precision, ctx.device)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.dtype == torch.float16)
        self.accum = cfg.grad_accum_steps
        if cfg.clip_grad_norm is not None and not cfg.clip_grad_norm > 0:
            raise DsmdError(f"train.clip_grad_norm must be positive (or null: no clipping), got {cfg.clip_grad_norm}")
        self.clip = cfg.clip_grad_norm
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self._reset()

    def _reset(self) -> None:
        self.micro_done = 0
        self._sums: dict[str, float] = {}

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.dtype)

    def _gather(self, sizes: list[int], student: torch.Tensor, teacher: torch.Tensor, image_ids: torch.Tensor,
                real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The micro-batch's real rows from all ranks, in rank order.

        Args:
            sizes: every rank's local size (streamed data: they may differ).
            student: ``(m, 2, D)`` float32 (image, text), with its graph.
            teacher: ``(m, 2, D)`` float32.
            image_ids, real: ``(m,)`` int64 and bool.

        Returns:
            ``student (n, 2, D)``, ``teacher (n, 2, D)``, ``image_ids (n,)``.
        """
        ints = torch.stack([image_ids, real.long()], dim=1)
        if self.ctx.enabled:
            pad = max(sizes) - student.shape[0]
            if pad:  # gathers need equal shapes; padded rows are marked not real
                student = torch.cat([student, student.new_zeros(pad, *student.shape[1:])])
                teacher = torch.cat([teacher, teacher.new_zeros(pad, *teacher.shape[1:])])
                ints = torch.cat([ints, ints.new_zeros(pad, 2)])
            student = self.ctx.gather_rows(student, with_grad=True)
            teacher = self.ctx.gather_rows(teacher)
            ints = self.ctx.gather_rows(ints)
        if not bool(ints[:, 1].all()):
            keep = ints[:, 1].nonzero().squeeze(1)
            student, teacher, ints = student[keep], teacher[keep], ints[keep]
        return student, teacher, ints[:, 0]

    def micro_batch(self, batch: dict, sizes: list[int], sync: bool = True) -> None:
        """Forward, losses and backward of one micro-batch; its teacher features enter the queue.

        Args:
            batch: this rank's part (:func:`~dsmd.training.sampling.collate_keyed`):
                ``pixel_values (m, 3, H, W)``, ``captions``, ``caption_index``,
                ``image_index``, ``view_index``, ``real (m,)``; optionally ``teacher_image`` and
                ``teacher_text (m, D)``, the teacher's rows (else read from ``features``).
            sizes: every rank's ``m`` (from :meth:`Distributed.gather_counts`).
            sync: all-reduce gradients in this backward (False: DDP's ``no_sync``, for all but
                the last micro-batch of a step).
        """
        device = self.ctx.device
        no_sync = getattr(self.model, "no_sync", None)
        with self.ctx.guard("a training step"), (contextlib.nullcontext() if sync or no_sync is None else no_sync()):
            tokens = self.student.tokenize(batch["captions"])
            with self._autocast():
                student_image, student_text = self.model(batch["pixel_values"].to(device),
                                                         tokens["input_ids"].to(device),
                                                         tokens["attention_mask"].to(device))
            local_student = torch.stack([student_image.float(), student_text.float()], dim=1)
            if "teacher_image" in batch:  # data.teacher_in_shards: the rows came with the samples
                local_teacher = torch.stack([batch["teacher_image"], batch["teacher_text"]], dim=1).float().to(device)
            elif self.features is None:
                raise DsmdError("this step reads the teacher's rows from the batch (data.teacher_in_shards), but the "
                                "batch has no teacher_image / teacher_text")
            else:
                local_teacher = torch.stack([self.features.image_rows(batch["image_index"], batch["view_index"]),
                                             self.features.text_rows(batch["caption_index"])], dim=1).to(device)
            student, teacher, image_ids = self._gather(sizes, local_student, local_teacher,
                                                       batch["image_index"].to(device), batch["real"].to(device))
            losses = self.objective(student[:, 0], student[:, 1], teacher[:, 0], teacher[:, 1], image_ids)
            total, _ = self.balancer(losses)
            self.scaler.scale(total / self.accum).backward()
        self.objective.update_queue(teacher[:, 0], teacher[:, 1], image_ids)
        self.micro_done += 1
        for name, value in {"total": total, **losses}.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value.detach())

    def optimizer_step(self) -> dict[str, float]:
        """Step on the mean gradient of the micro-batches since the last step.

        Returns:
            The step's log record: the losses and ``total`` averaged over its micro-batches,
            the balancer's record of the last one, ``grad_norm`` (before clipping; inf or nan
            when fp16 overflowed and the step was skipped) and, with accumulation,
            ``micro_batches``.
        """
        if self.micro_done == 0:
            raise RuntimeError("optimizer_step() without a micro_batch() before it")
        if self.micro_done < self.accum:  # a short last step: the mean of the gradients it has
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(self.accum / self.micro_done)
        self.scaler.unscale_(self.optimizer)  # (no collective from here on: DDP all-reduced in backward)
        grads = [p for p in self.params if p.grad is not None]
        if self.clip is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(grads, self.clip))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in grads]))) \
                if grads else 0.0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        record = {name: value / self.micro_done for name, value in self._sums.items()}
        record.update(self.balancer.log_record())
        record["grad_norm"] = norm
        if self.accum > 1:
            record["micro_batches"] = self.micro_done
        self._reset()
        return record

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
