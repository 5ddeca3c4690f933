"""Training pairs streamed from webdataset shards (``data.streaming: true``).

:class:`StreamingPairDataset` reads a split's shards sequentially instead of opening images by
random access, and yields the :class:`~dsmd.data.batches.PairItem` s
:class:`~dsmd.data.loader.PairDataset` yields: a sample's image reference ``SHARD::MEMBER`` is
looked up in the split's listing to find its image row and caption indices, and each pair
carries its teacher targets, read from the feature store by that index.

Without a store (``targets=None``, ``data.teacher_in_shards``) the targets come from the
sample itself, from the ``KEY.teacher_image.npy`` / ``teacher_text.npy`` /
``teacher_views.npy`` members
:func:`~dsmd.extraction.webdataset_teacher.write_teacher_shards` adds: the image row of the
pair's view (view 0 the plain image, ``v >= 1`` row ``v - 1`` of ``teacher_views``) and the
row of its caption. Either way the training step sees the same batch record.

Per epoch (:meth:`StreamingPairDataset.set_epoch` sets the seed):

- the shard order is shuffled from the seed, the same way in every process;
- the consumers (DataLoader workers x distributed ranks, ``torch.distributed`` rank and world
  size if initialised) take every n-th shard of that order. With fewer shards than consumers,
  every consumer reads all shards and keeps every n-th sample instead. Either way each pair
  of the split is yielded exactly once per epoch. Under data parallelism ranks may then get
  different numbers of pairs; give each rank the same number of equally full shards;
- each consumer passes its pairs through a shuffle buffer of ``shuffle_buffer`` pairs,
  seeded from (seed, consumer).
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from dsmd.data.batches import PairItem
from dsmd.data.datasets import CaptionedImages
from dsmd.data.formats.webdataset import iter_samples
from dsmd.data.images import parse_ref, tar_ref
from dsmd.data.loader import ImageCache, TeacherTargets, student_view
from dsmd.data.transforms import ImageTransform
from dsmd.errors import DsmdError

TEACHER_MEMBERS = ("teacher_image.npy", "teacher_text.npy", "teacher_views.npy")
FIX = (
    "Write shards that carry them with dsmd.extraction.webdataset_teacher.write_teacher_shards (and point "
    "data.manifest at the copies), or set data.teacher_in_shards=false to read the targets from the store."
)


def _decode_npy(data: bytes, where: str) -> torch.Tensor:
    """A float16 or float32 ``.npy`` member as a float32 tensor."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DsmdError(f"{where} is not a readable .npy array ({exc}). {FIX}") from exc
    if array.dtype not in (np.float16, np.float32):
        raise DsmdError(f"{where} holds {array.dtype}, not float16 or float32. {FIX}")
    return torch.from_numpy(array.astype(np.float32))


def consumer() -> tuple[int, int]:
    """``(index, count)`` of this reader among all DataLoader workers of all ranks."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world * workers


class StreamingPairDataset(IterableDataset):
    """The pairs of a webdataset split, read shard by shard, as :class:`~dsmd.data.batches.PairItem` s
    carrying their teacher targets; ``len`` is the number of pairs.

    Args:
        data: the split, listed by ``data.kind=webdataset`` (every image a ``SHARD::MEMBER``).
        transform, cache, views, view_transform: as for :class:`~dsmd.data.loader.PairDataset`
            (an enabled cache keeps every decoded image: switch ``data.cache_images`` off for
            data larger than memory).
        targets: the split's teacher features in the store; None reads them from each
            sample's ``teacher_*.npy`` members instead (``data.teacher_in_shards``, see the
            module docstring).
        shuffle_buffer: pairs held for shuffling (1: no shuffling within the shard order).
        seed: the shuffle seed; :meth:`set_epoch` replaces it each epoch.
        dim: with the rows read from the shards, the feature width they must have (None: any).

    Raises:
        DsmdError: an image of ``data`` is not a tar member (the data is not webdataset shards);
            while iterating with ``teacher_in_shards``, a sample lacks a teacher member or
            holds rows of the wrong shape.
    """

    def __init__(
        self,
        data: CaptionedImages,
        transform: Callable,
        targets: TeacherTargets | None = None,
        cache: ImageCache | None = None,
        views: int = 0,
        view_transform: ImageTransform | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        dim: int | None = None,
    ):
        if views and view_transform is None:
            raise ValueError("views > 0 needs a view_transform (the student's eval transform)")
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be at least 1, got {shuffle_buffer}")
        self.data = data
        self.transform = transform
        self.cache = cache or ImageCache(enabled=False, max_side=10**9)
        self.views = views
        self.view_transform = view_transform
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.targets = targets
        self.teacher_in_shards = targets is None
        self.dim = dim
        self.row_of = {ref: i for i, ref in enumerate(data.image_paths)}
        self.captions_of: list[list[int]] = [[] for _ in data.image_paths]
        for j, image in enumerate(data.caption_image):
            self.captions_of[image].append(j)
        shards = {}
        for ref in data.image_paths:
            parsed = parse_ref(ref)
            if parsed is None or not parsed.is_tar:
                raise DsmdError(
                    f"data.streaming=true reads webdataset shards, but {data.name} has the image "
                    f"{ref}. Set data.kind=webdataset, or data.streaming=false."
                )
            shards.setdefault(parsed.container, None)
        self.shards = list(shards)

    def set_epoch(self, seed: int) -> None:
        """Reseed the shard order and the shuffle buffer (call before iterating each epoch)."""
        self.seed = seed

    def __len__(self) -> int:
        return len(self.data)

    def _teacher(self, shard: str, sample, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The sample's teacher rows: image ``(1 + V, D)`` (plain, then the views), text ``(C, D)``."""
        where = f"{shard}::{sample.key}"
        wanted = TEACHER_MEMBERS[:2] + ((TEACHER_MEMBERS[2],) if self.views else ())
        for name in wanted:
            if name not in sample.members:
                raise DsmdError(
                    f"data.teacher_in_shards=true, but the sample {sample.key} of shard {shard} has no "
                    f"{sample.key}.{name} member. {FIX}"
                )
        image = _decode_npy(sample.members["teacher_image.npy"], f"{where}.teacher_image.npy")
        text = _decode_npy(sample.members["teacher_text.npy"], f"{where}.teacher_text.npy")
        dim = self.dim if self.dim is not None else image.shape[-1]
        captions = len(self.captions_of[row])
        if image.shape != (dim,) or text.shape != (captions, dim):
            raise DsmdError(
                f"{where}: teacher_image.npy is {tuple(image.shape)} and teacher_text.npy "
                f"{tuple(text.shape)}, expected ({dim},) and ({captions}, {dim}) (the sample's "
                f"{captions} captions). The shards were written for other data or another store. {FIX}"
            )
        rows = image[None]
        if self.views:
            views = _decode_npy(sample.members["teacher_views.npy"], f"{where}.teacher_views.npy")
            if views.ndim != 2 or views.shape[0] < self.views or views.shape[1] != dim:
                raise DsmdError(
                    f"{where}: teacher_views.npy is {tuple(views.shape)}, but training draws "
                    f"{self.views} views of width {dim}. Write the shards from a store with "
                    f"store_views >= {self.views}, or lower store_views."
                )
            rows = torch.cat([rows, views[: self.views]])
        return rows, text

    def _pairs(self, k: int, n: int) -> Iterator[tuple]:
        """(image, caption index, image row[, teacher rows]) of this consumer's share, in reading
        order; with ``teacher_in_shards`` the teacher rows are (image rows ``(1 + V, D)``, caption
        row ``(D,)``)."""
        order = list(self.shards)
        random.Random(self.seed).shuffle(order)
        by_shard = len(order) >= n
        mine = order[k::n] if by_shard else order
        seen = 0
        for shard in mine:
            # images of other splits, and images already in the cache, are not read
            for sample in iter_samples(
                shard,
                read_images=True,
                wanted=lambda name, s=shard: tar_ref(s, name) in self.row_of and tar_ref(s, name) not in self.cache,
                read_members=TEACHER_MEMBERS if self.teacher_in_shards else (),
            ):
                row = self.row_of.get(tar_ref(shard, sample.image)) if sample.image else None
                if row is None:
                    continue
                seen += 1
                if not by_shard and (seen - 1) % n != k:
                    continue
                img = self.cache.get(self.data.image_paths[row], sample.image_bytes)
                if self.teacher_in_shards:
                    image_rows, text_rows = self._teacher(shard, sample, row)
                    for c, j in enumerate(self.captions_of[row]):
                        yield img, j, row, (image_rows, text_rows[c])
                else:
                    for j in self.captions_of[row]:
                        yield img, j, row

    def __iter__(self) -> Iterator[tuple]:
        k, n = consumer()
        rng = random.Random(f"{self.seed}/{k}")
        buffer: list = []
        for pair in self._pairs(k, n):
            buffer.append(pair)
            if len(buffer) >= self.shuffle_buffer:
                i = rng.randrange(len(buffer))
                buffer[i], buffer[-1] = buffer[-1], buffer[i]
                yield self._item(*buffer.pop())
        rng.shuffle(buffer)
        for pair in buffer:
            yield self._item(*pair)

    def _item(self, img, j: int, row: int, teacher: tuple | None = None) -> PairItem:
        pixels, view = student_view(img, row, self.transform, self.views, self.view_transform)
        if teacher is None:
            teacher_image, teacher_text = self.targets.pair_rows(row, view, j)
        else:
            image_rows, teacher_text = teacher
            teacher_image = image_rows[view]
        return PairItem(pixels, self.data.captions[j], j, row, view, teacher_image, teacher_text)
