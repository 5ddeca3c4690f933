"""Minimal torch.distributed plumbing for ``torchrun ... -m dsmd extract`` (private).

Extraction exchanges no tensors, only barriers, so it always uses the gloo backend (CPU,
any number of nodes), whatever device the teacher runs on.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dsmd.training.distributed import env_world

# Ranks wait at a barrier while the others finish their chunks (and while rank 0 merges a
# large store); torchrun tears the group down if a rank dies, so the wait may be long.
BARRIER_TIMEOUT = datetime.timedelta(hours=48)


@dataclass
class Group:
    """This process's place among the extraction's processes.

    Attributes:
        rank, world_size, local_rank: from the torchrun environment (0, 1, 0 alone).
        owned: whether :func:`join` initialised the process group (and :meth:`leave` ends it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def leave(self, ok: bool = True) -> None:
        """End the process group if :func:`join` started it (after a barrier when ``ok``)."""
        if self.owned and dist.is_initialized():
            if ok:
                dist.barrier()  # without it gloo sometimes aborts at shutdown
            dist.destroy_process_group()
            self.owned = False


def join() -> Group:
    """Join the torchrun process group (gloo), or describe a single process."""
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), owned=False)
    rank, world, local = env_world() or (0, 1, 0)
    if world <= 1:
        return Group(0, 1, 0)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=BARRIER_TIMEOUT)
    return Group(rank, world, local, owned=True)


def rank_device(device: torch.device, group: Group) -> torch.device:
    """One GPU per local rank (``cuda:LOCAL_RANK``) when the teacher runs on CUDA."""
    if group.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", group.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    return device
