"""The micro-batches of an epoch, grouped into optimiser steps, the same on every rank.

:func:`epoch_micro_batches` gives this rank's :class:`~dsmd.data.batches.PairBatch` es of one
epoch (random access through :class:`~dsmd.training.sampling.RankBatchSampler`, or streamed
shards), after those a resumed run already trained on. :func:`synchronised` makes the ranks
agree, micro-batch by micro-batch, on how many rows each holds: every rank's batch is padded to
the largest (rows marked not ``real``, which the losses never see), a rank that has run out
pads with a copy of a pair, and the epoch ends when no rank has a real pair left. This is the
only place padding happens. :func:`optimizer_steps` groups the micro-batches into optimiser
steps of ``grad_accum_steps``, telling the step which micro-batch is the last of its step (the
one whose backward pass all-reduces the gradients); an epoch's last step may be shorter.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from dsmd.data.batches import PairBatch, PairCollator
from dsmd.data.streaming import StreamingPairDataset
from dsmd.runtime.distributed import Distributed
from dsmd.training.sampling import RankBatchSampler, SeededPairs, epoch_order, epoch_seed


def epoch_micro_batches(
    pairs: Dataset,
    collate: PairCollator,
    micro: int,
    seed: int,
    epoch: int,
    skip: int,
    ctx: Distributed,
    num_workers: int,
) -> Iterator[PairBatch]:
    """This rank's micro-batches of ``epoch`` after the first ``skip`` (see the module docstring).

    Args:
        pairs: a map-style pair dataset, or a :class:`~dsmd.data.streaming.StreamingPairDataset`
            (each rank reads its own shards; skipping means reading past them).
        micro: pairs of one micro-batch over all ranks.
    """
    key = epoch_seed(seed, epoch)
    if isinstance(pairs, StreamingPairDataset):
        pairs.set_epoch(key)
        random.seed(key * 65_537 + ctx.rank)
        loader = DataLoader(
            pairs,
            batch_size=micro // ctx.world_size,
            collate_fn=collate,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(key * 65_537 + ctx.rank),
        )
        return itertools.islice(loader, skip, None)
    sampler = RankBatchSampler(len(pairs), micro, seed, epoch, ctx.rank, ctx.world_size, skip)
    return iter(DataLoader(SeededPairs(pairs), batch_sampler=sampler, collate_fn=collate, num_workers=num_workers))


def spare_batch(pairs: Dataset, collate: PairCollator, seed: int, epoch: int) -> Callable[[], PairBatch] | None:
    """A way to make a padding batch for a rank whose part of the epoch is empty (random access
    only; a streamed rank pads with its previous batch)."""
    if isinstance(pairs, StreamingPairDataset) or len(pairs) == 0:
        return None
    first = int(epoch_order(len(pairs), seed, epoch)[0])
    return lambda: collate([SeededPairs(pairs)[(epoch_seed(seed, epoch), first)]]).padding(1)


def synchronised(
    batches: Iterable[PairBatch], ctx: Distributed, spare: Callable[[], PairBatch] | None = None
) -> Iterator[PairBatch]:
    """This rank's micro-batches, each padded to the largest of all ranks', until no rank has a
    real pair left (alone: the batches as they are).

    A rank that has run out (or whose part is empty) pads with its previous batch, else with
    ``spare()``; when it has neither, the epoch ends for every rank.
    """
    previous: PairBatch | None = None
    for batch in itertools.chain(batches, itertools.repeat(None)):
        can_pad = previous is not None or spare is not None
        rows = len(batch) if batch is not None else (1 if can_pad else 0)
        counts = ctx.gather_counts(rows, int(batch.real.sum()) if batch is not None else 0)
        if min(n for n, _ in counts) == 0 or sum(real for _, real in counts) == 0:
            return
        target = max(n for n, _ in counts)
        if batch is None:
            source = previous if previous is not None else spare()
            batch = source.padding(target)
        else:
            batch = batch.padded(target)
        previous = batch
        yield batch


class _Lookahead:
    """An iterator that can tell whether another item follows."""

    def __init__(self, items: Iterable):
        self._items = iter(items)
        self._next = next(self._items, self)

    def has_next(self) -> bool:
        return self._next is not self

    def pop(self):
        item, self._next = self._next, next(self._items, self)
        return item


def optimizer_steps(micro_batches: Iterable[PairBatch], accum: int) -> Iterator[Iterator[tuple[PairBatch, bool]]]:
    """Group micro-batches into optimiser steps of at most ``accum``.

    Yields, per step, an iterator of ``(micro-batch, last)``, ``last`` True for the step's last
    micro-batch; consume each step fully before asking for the next.
    """
    items = _Lookahead(micro_batches)

    def one_step() -> Iterator[tuple[PairBatch, bool]]:
        for i in range(accum):
            batch = items.pop()
            last = i == accum - 1 or not items.has_next()
            yield batch, last
            if last:
                return

    while items.has_next():
        yield one_step()
