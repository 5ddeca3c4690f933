"""Which pairs each rank trains on, in an order that does not depend on the number of ranks.

Epoch ``e`` visits the training pairs in one seeded permutation (:func:`epoch_order`), the
same in every process whatever the world size. Micro-batch ``u`` of the epoch is the
``u``-th slice of ``micro_batch`` pairs of that order (with ``grad_accum_steps = N``,
optimiser step ``s`` is micro-batches ``s*N .. s*N + N - 1``, i.e. the ``s``-th slice of
``batch_size`` pairs). Rank ``r`` of ``W`` takes the ``r``-th contiguous part of
``ceil(n / W)`` pairs of each micro-batch of ``n`` pairs, so gathering the ranks' parts in rank
order gives back the micro-batch in order. In a short last micro-batch some parts are shorter
or empty; :func:`dsmd.training.batches.synchronised` pads them (the one place padding happens).

Random augmentation is drawn per pair from ``(seed, epoch, pair)``
(:class:`SeededPairs`), so it too is independent of the world size and of where a resumed
run starts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler

from dsmd.errors import DsmdError


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (0-based) of a run seeded with ``seed``."""
    return seed * 1_000_003 + epoch


def epoch_order(num_pairs: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation ``(num_pairs,)`` int64 in which epoch ``epoch`` visits the pairs."""
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(num_pairs, generator=generator)


def micro_batch_size(batch_size: int, grad_accum_steps: int, world_size: int) -> int:
    """Pairs of one micro-batch, over all ranks: ``batch_size / grad_accum_steps``.

    Raises:
        DsmdError: ``batch_size`` does not divide into ``grad_accum_steps`` micro-batches of
            whole per-rank parts.
    """
    if batch_size % (grad_accum_steps * world_size):
        raise DsmdError(
            f"train.batch_size={batch_size} (the global batch) must divide by grad_accum_steps="
            f"{grad_accum_steps} x {world_size} processes = {grad_accum_steps * world_size}, so that every "
            f"process takes an equal part of each micro-batch. Choose a multiple of {grad_accum_steps * world_size}."
        )
    return batch_size // grad_accum_steps


class RankBatchSampler(Sampler[list[tuple[int, int]]]):
    """This rank's part of each micro-batch of one epoch, as ``(seed, pair)`` keys.

    A part that is empty (a short last micro-batch on a high rank) is not yielded.

    Args:
        num_pairs: training pairs in the split.
        micro_batch: pairs per micro-batch over all ranks (divisible by ``world_size``).
        seed, epoch: pick the permutation (:func:`epoch_order`).
        rank, world_size: this process's place.
        skip: micro-batches of the epoch already done (a resumed run), not yielded.
    """

    def __init__(
        self, num_pairs: int, micro_batch: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1, skip: int = 0
    ):
        self.num_pairs, self.micro_batch = num_pairs, micro_batch
        self.seed, self.epoch = seed, epoch
        self.rank, self.world_size, self.skip = rank, world_size, skip

    def _parts(self) -> Iterator[list[int]]:
        order = epoch_order(self.num_pairs, self.seed, self.epoch).tolist()
        for start in range(self.skip * self.micro_batch, self.num_pairs, self.micro_batch):
            chunk = order[start : start + self.micro_batch]
            part = math.ceil(len(chunk) / self.world_size)
            yield chunk[self.rank * part : (self.rank + 1) * part]

    def __len__(self) -> int:
        return sum(1 for part in self._parts() if part)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        key = epoch_seed(self.seed, self.epoch)
        for part in self._parts():
            if part:
                yield [(key, j) for j in part]


class SeededPairs(Dataset):
    """A pair dataset whose item ``(seed, j)`` is item ``j`` drawn with ``random`` seeded from
    ``(seed, j)`` (the image transforms and the view choice draw from ``random``)."""

    def __init__(self, pairs: Dataset):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        seed, j = key
        random.seed(seed * 7_368_787 + j)
        return self.pairs[j]
