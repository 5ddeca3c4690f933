"""The unpaired items of each micro-batch (docs/method.md "Unpaired data"), the same on every
number of ranks and after a resume.

Each pool is read as an endless stream: pass ``c`` over a pool of ``N`` items visits it in the
seeded permutation :func:`pool_order` ``(seed, modality, c)``, and position ``p`` of the stream is
row ``pool_order(..., p // N)[p % N]``. Global micro-batch ``g`` (``g = epoch x stride + u`` for
micro-batch ``u`` of the epoch, ``stride = steps_per_epoch x grad_accum_steps``) takes the ``n``
positions ``g n .. g n + n - 1`` of each pool, ``n = unpaired_ratio x batch_size /
grad_accum_steps``; rank ``r`` of ``W`` takes the ``r``-th contiguous ``n / W`` of them, so the
gathered micro-batch is the one a single process trains on. The random crops of the item at
position ``p`` are drawn from :func:`item_seed`. Nothing here is saved in a checkpoint: a resumed
run derives the same items from its position.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader

from dsmd.config import RunConfig
from dsmd.config.unpaired import unpaired_per_step
from dsmd.data.batches import PairBatch
from dsmd.data.datasets import CaptionedImages
from dsmd.data.loader import ImageCache
from dsmd.data.unpaired import load_pools
from dsmd.data.unpaired_batches import MixedBatch, UnpairedBatch, UnpairedCollator, UnpairedPoolDataset
from dsmd.errors import DsmdError
from dsmd.models import DualEncoder
from dsmd.runtime.distributed import Distributed
from dsmd.store import FeatureStore
from dsmd.store.manifest import UNPAIRED_TABLES

MODALITIES = ("image", "text")


@functools.lru_cache(maxsize=4)
def pool_order(size: int, seed: int, modality: str, cycle: int) -> list[int]:
    """The order ``(size,)`` in which pass ``cycle`` visits a pool of ``modality``."""
    key = ((seed * 1_000_003 + cycle) * 8 + MODALITIES.index(modality) + 1) * 7_919
    return torch.randperm(size, generator=torch.Generator().manual_seed(key)).tolist()


def item_seed(seed: int, modality: str, position: int) -> int:
    """The ``random`` seed of the item at stream ``position`` of a pool (its random crop)."""
    return ((seed * 1_000_003 + position) * 8 + MODALITIES.index(modality) + 1) * 104_729 % 2**63


class UnpairedStream:
    """The unpaired items of every micro-batch of a run (see the module docstring).

    Args:
        dataset: the pools and their teacher features.
        collate: builds a rank's :class:`UnpairedBatch`.
        per_micro: ``n``, items of each pool per micro-batch over all ranks.
        seed: ``train.seed``.
        stride: micro-batches per epoch (``steps_per_epoch x grad_accum_steps``).
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        dataset: UnpairedPoolDataset,
        collate: UnpairedCollator,
        per_micro: int,
        seed: int,
        stride: int,
        num_workers: int = 0,
    ):
        self.dataset, self.collate = dataset, collate
        self.per_micro, self.seed, self.stride, self.num_workers = per_micro, seed, stride, num_workers

    def keys(self, micro: int, rank: int = 0, world_size: int = 1) -> list[tuple[str, int, int]]:
        """The items ``(modality, crop seed, pool row)`` of global micro-batch ``micro`` on ``rank``."""
        part = self.per_micro // world_size
        keys = []
        for modality in MODALITIES:
            size = self.dataset.size(modality)
            if size == 0:
                continue
            start = micro * self.per_micro + rank * part
            for position in range(start, start + part):
                row = pool_order(size, self.seed, modality, position // size)[position % size]
                keys.append((modality, item_seed(self.seed, modality, position), row))
        return keys

    def epoch_batches(self, epoch: int, skip: int, ctx: Distributed) -> Iterator[UnpairedBatch]:
        """This rank's unpaired batches of ``epoch``'s micro-batches from micro-batch ``skip`` on."""
        first = epoch * self.stride
        sampler = [self.keys(first + u, ctx.rank, ctx.world_size) for u in range(skip, self.stride)]
        return iter(
            DataLoader(self.dataset, batch_sampler=sampler, collate_fn=self.collate, num_workers=self.num_workers)
        )


def with_unpaired(pairs: Iterable[PairBatch], unpaired: Iterator[UnpairedBatch]) -> Iterator[MixedBatch]:
    """Each micro-batch of pairs with its unpaired batch (as long as there are pairs)."""
    for batch, extra in zip(pairs, unpaired, strict=False):
        yield MixedBatch(batch, extra)


def open_pools(
    cfg: RunConfig, store: FeatureStore, dataset: dict[str, CaptionedImages], ctx: Distributed, progress: bool
) -> dict[str, CaptionedImages]:
    """The config's pools by table name, checked against the store (fingerprints) and apart from the
    val and test data; their tables verified like the train split."""
    pools = load_pools(cfg.data, dataset)
    for modality, pool in pools.items():
        store.check_pool(modality, pool.fingerprint())
    tables = {UNPAIRED_TABLES[modality]: pool for modality, pool in pools.items()}
    store.verify(list(tables), allow_hashing=not ctx.enabled, progress=progress)
    return tables


def build_unpaired(
    cfg: RunConfig,
    store: FeatureStore,
    data: dict[str, CaptionedImages],
    student: DualEncoder,
    steps_per_epoch: int,
    ctx: Distributed,
) -> UnpairedStream:
    """The run's :class:`UnpairedStream` over the pool tables in ``data`` (from :func:`open_pools`).

    Raises:
        DsmdError: the unpaired items of a micro-batch do not divide over the processes.
    """
    per_micro = unpaired_per_step(cfg) // cfg.train.grad_accum_steps
    if per_micro % ctx.world_size:
        raise DsmdError(
            f"train.unpaired_ratio x train.batch_size / grad_accum_steps = {per_micro} unpaired items a micro-batch "
            f"must divide by the {ctx.world_size} processes; choose a ratio that gives a multiple of {ctx.world_size}."
        )
    tables = {modality: UNPAIRED_TABLES[modality] for modality in MODALITIES if UNPAIRED_TABLES[modality] in data}
    image, text = tables.get("image"), tables.get("text")
    cache = ImageCache(max_side=round(cfg.student.image_size * 1.15), enabled=cfg.data.cache_images)
    dataset = UnpairedPoolDataset(
        data.get(image),
        store.split(image) if image else None,
        data.get(text),
        store.split(text) if text else None,
        student.image_transform(train=cfg.train.augment),
        cache,
    )
    tokenize = student.caption_tokenizer()
    collate = UnpairedCollator(tokenize, tokenize.tokenizer.pad_token_id or 0)
    stride = steps_per_epoch * cfg.train.grad_accum_steps
    return UnpairedStream(dataset, collate, per_micro, cfg.train.seed, stride, cfg.data.num_workers)
