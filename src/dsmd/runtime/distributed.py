"""Data parallelism on ``torch.distributed``, switched on by ``torchrun``'s environment.

``torchrun --nproc_per_node N [--nnodes M --rdzv-endpoint HOST:PORT ...] -m dsmd train ...``
starts one process per device and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``.
:func:`init_distributed` reads them, picks the backend (NCCL on GPUs, gloo on CPUs), puts the
rank on ``cuda:LOCAL_RANK`` and joins the process group with ``train.dist_timeout_s`` as the
timeout of every collective. Without that environment (or with one process) nothing is
initialised and every helper here is a no-op: the training loop is the same for 1 and N
processes.

Gradients through :func:`Distributed.gather_rows` (``with_grad=True``): every rank receives
all ranks' rows and computes the same loss ``L`` on them. The backward pass sends each rank
the SUM over ranks of ``dL/d(its rows)``, i.e. ``W * dL/d(its rows)`` since the W copies of
``L`` are identical; DDP then averages parameter gradients over the W ranks, so each rank
ends with ``(1/W) * sum_r W * dL/dθ|_(rows of r) = dL/dθ``: exactly the gradient of a single
process holding the whole batch. No extra factor is needed (the first-step gradients are
compared in ``tests/training/test_distributed.py::test_two_processes_match_one``).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from dsmd.errors import DsmdError
from dsmd.runtime.device import resolve_device

BACKENDS = ("auto", "nccl", "gloo")


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradients of all ranks' copies."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        rows = grad.shape[0] // ctx.world
        if dist.get_backend() == "nccl":
            out = grad.new_empty((rows, *grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad.contiguous())
            return out
        # gloo has no reduce-scatter: sum everything (in a copy: autograd may share `grad`),
        # keep our slice
        summed = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(summed)
        return summed[ctx.rank * rows : (ctx.rank + 1) * rows]


@dataclass
class Distributed:
    """This process's place in the run.

    Attributes:
        rank: global rank, 0 .. world_size - 1.
        world_size: number of processes (1: no process group).
        local_rank: rank on this node (the GPU index).
        device: the device this rank trains on.
        backend: ``nccl`` or ``gloo``; None alone.
        timeout_s: the timeout of every collective.
        owns_group: whether :func:`init_distributed` started the process group (and
            :meth:`shutdown` ends it); False when the caller had already joined one.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    timeout_s: int = 600
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, validates and writes checkpoints."""
        return self.rank == 0

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Turn a failure of the collectives inside (a dead peer, a timeout) into one DsmdError.

        The forward and backward passes hold collectives too (the gathers, DDP's all-reduce),
        so the training step runs inside one. Out-of-memory errors pass through unchanged.
        """
        if not self.enabled:
            yield
            return
        try:
            yield
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, dist.DistError) as exc:
            raise collective_error(self, what, exc) from exc

    def barrier(self, what: str = "a barrier") -> None:
        """Wait for all ranks (at most ``timeout_s``)."""
        if self.enabled:
            with self.guard(what):
                dist.barrier()

    def gather_rows(self, x: torch.Tensor, with_grad: bool = False) -> torch.Tensor:
        """Concatenate every rank's ``x`` in rank order.

        Args:
            x: ``(m, ...)``, the same shape on every rank.
            with_grad: keep the autograd graph (see the module docstring for the gradient).

        Returns:
            ``(world_size * m, ...)``; ``x`` itself alone.
        """
        if not self.enabled:
            return x
        with self.guard("gathering features"), torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
            return _GatherWithGrad.apply(x)

    def gather_counts(self, rows: int, real: int) -> list[tuple[int, int]]:
        """Every rank's ``(rows, real rows)`` of its next micro-batch (0 rows: it has none)."""
        if not self.enabled:
            return [(rows, real)]
        counts = self.gather_rows(torch.tensor([[rows, real]], device=self.device))
        return [(int(a), int(b)) for a, b in counts.tolist()]

    def broadcast_object(self, obj: Any, what: str) -> Any:
        """Rank 0's ``obj`` (any picklable value) on every rank; ``obj`` itself alone."""
        if not self.enabled:
            return obj
        box = [obj]
        with self.guard(what):
            dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def any_rank(self, flag: bool, what: str) -> bool:
        """Whether ``flag`` is true on any rank (one all-reduce of a single number); ``flag`` alone."""
        if not self.enabled:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        with self.guard(what):
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def shutdown(self, clean: bool = True) -> None:
        """Leave the process group: after a barrier when ``clean`` (without it gloo sometimes
        aborts at exit), at once after an error (the peers may be gone)."""
        if self.enabled and self.owns_group and dist.is_initialized():
            # Free what still holds the group (DDP's reducer, its buckets) before ending it.
            gc.collect()
            if clean:
                self.barrier("shutdown")
            dist.destroy_process_group()


def collective_error(ctx: Distributed, what: str, exc: BaseException) -> DsmdError:
    """The message of a failed collective: most often another rank died or hangs."""
    return DsmdError(
        f"rank {ctx.rank}/{ctx.world_size}: {what} failed. Most likely another rank died, or did not answer "
        f"within train.dist_timeout_s={ctx.timeout_s}s: look at the other ranks' output for the cause; "
        f"`dsmd train --resume` continues from the last checkpoint. ({type(exc).__name__}: {str(exc)[:300]})"
    )


def env_world() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's environment, None outside torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))


def _rank_device(name: str, local_rank: int, world_size: int) -> torch.device:
    """``auto``/``cuda`` -> ``cuda:LOCAL_RANK`` (when CUDA is there); ``cpu`` stays."""
    if world_size > 1 and name.startswith("cuda:"):
        raise DsmdError(
            f"train.device={name}: under torchrun every rank uses cuda:LOCAL_RANK. "
            "Set train.device=cuda (or auto); choose GPUs with CUDA_VISIBLE_DEVICES."
        )
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        if local_rank >= torch.cuda.device_count():
            raise DsmdError(
                f"LOCAL_RANK {local_rank}, but this node has {torch.cuda.device_count()} GPUs. "
                "Start at most that many processes per node (--nproc_per_node)."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def init_distributed(device: str = "auto", backend: str = "auto", timeout_s: int = 600) -> Distributed:
    """Join torchrun's process group, or describe a single process.

    Training calls it with ``train.device``, ``train.dist_backend`` and ``train.dist_timeout_s``;
    extraction with the teacher's device, ``gloo`` (its processes only meet at barriers) and a
    long timeout (ranks wait while the others finish their chunks). A process group that is
    already initialised is joined as it is and left running at :meth:`Distributed.shutdown`.

    Args:
        device: ``train.device``.
        backend: ``auto`` (NCCL on CUDA, gloo on the CPU), ``nccl`` or ``gloo``.
        timeout_s: timeout of every collective, so a dead or stuck rank stops the others.

    Raises:
        DsmdError: an unknown backend, NCCL without CUDA, a rank without its GPU.
    """
    if backend not in BACKENDS:
        raise DsmdError(f"train.dist_backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if timeout_s <= 0:
        raise DsmdError(f"train.dist_timeout_s must be positive, got {timeout_s}")
    env = env_world()
    if env is None or env[1] <= 1:
        local_rank = env[2] if env else 0
        return Distributed(
            device=_rank_device(device, local_rank, 1) if env else resolve_device(device), timeout_s=timeout_s
        )
    rank, world, local_rank = env
    dev = _rank_device(device, local_rank, world)
    chosen = ("nccl" if dev.type == "cuda" else "gloo") if backend == "auto" else backend
    if chosen == "nccl" and dev.type != "cuda":
        raise DsmdError(
            "train.dist_backend=nccl needs CUDA GPUs; this rank trains on the CPU. Use dist_backend=gloo (or auto)."
        )
    # (NCCL's default asynchronous error handling aborts a collective that outlives the
    # timeout, as gloo does: a stuck peer ends in an error, not a hang.)
    ctx = Distributed(rank, world, local_rank, dev, chosen, timeout_s, owns_group=not dist.is_initialized())
    if ctx.owns_group:
        with ctx.guard("joining the process group"):
            dist.init_process_group(chosen, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    else:
        ctx.backend = dist.get_backend()
    return ctx


__all__ = ["Distributed", "collective_error", "env_world", "init_distributed"]
