"""torch datasets over :class:`~dsmd.data.datasets.CaptionedImages`.

Training pairs are looked up by index (caption ``j`` and the row of its image), so the loader
can shuffle; each pair carries the teacher's features of the same index, read from the feature
store (the published code took teacher rows by batch position and so could not shuffle). Images are
files or container references (:mod:`dsmd.data.images`); :mod:`dsmd.data.streaming` yields
the same items from webdataset shards read in sequence.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

import torch
from PIL import Image
from torch.utils.data import Dataset

from dsmd.data.batches import PairItem
from dsmd.data.datasets import CaptionedImages
from dsmd.data.images import decode_image
from dsmd.data.transforms import ImageTransform, load_image, view_of


class TeacherTargets(Protocol):
    """Where a pair's teacher targets come from (a :class:`dsmd.store.SplitFeatures`)."""

    def pair_rows(self, image: int, view: int, caption: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(teacher_image (D,), teacher_text (D,))`` float32."""
        ...


class ImageCache:
    """Decoded images, downsized so the short side is at most ``max_side``, kept in memory.

    Decoding and resizing a PNG costs more than the rest of a small model's input pipeline;
    small datasets (the demo's 430 stamps) fit in memory many times over.
    """

    def __init__(self, max_side: int = 320, enabled: bool = True):
        self.max_side = max_side
        self.enabled = enabled
        self._images: dict[str, Image.Image] = {}

    def __contains__(self, path: str) -> bool:
        return path in self._images

    def get(self, path: str, data: bytes | None = None) -> Image.Image:
        """The image at ``path`` (a file or container reference), decoded from ``data`` if given."""
        img = self._images.get(path)
        if img is None:
            img = load_image(path) if data is None else decode_image(data, path)
            short = min(img.size)
            if short > self.max_side:
                scale = self.max_side / short
                img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.Resampling.BICUBIC)
            if self.enabled:
                self._images[path] = img
        return img


class ImageDataset(Dataset):
    """The unique images of a split; item ``i`` is ``(i, pixels (3, H, W))``.

    With ``view=v``, the pixels are the fixed augmented view ``v`` of each image
    (:func:`~dsmd.data.transforms.view_of`) instead of the plain transform.
    """

    def __init__(
        self, data: CaptionedImages, transform: ImageTransform, cache: ImageCache | None = None, view: int | None = None
    ):
        self.data = data
        self.transform = transform
        self.cache = cache or ImageCache(enabled=False, max_side=10**9)
        self.view = view

    def __len__(self) -> int:
        return self.data.num_images

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        img = self.cache.get(self.data.image_paths[i])
        if self.view is None:
            return i, self.transform(img)
        return i, self.transform.view(img, view_of(i, self.view))


class PairDataset(Dataset):
    """Image-caption pairs with their teacher targets; item ``j`` is a :class:`PairItem`.

    With ``views=V > 0`` each item draws ``view`` uniformly from ``0..V``: 0 is the plain
    (eval) transform, ``v >= 1`` the fixed augmented view ``v - 1`` whose teacher feature the
    store holds. Otherwise ``view`` is 0 and ``transform`` (random crops, if any) applies. The
    item's ``teacher_image`` is the teacher's feature of exactly that view.

    Args:
        targets: the split's teacher features (``pair_rows(image, view, caption)``, e.g. a
            :class:`dsmd.store.SplitFeatures`).
    """

    def __init__(
        self,
        data: CaptionedImages,
        transform: Callable,
        targets: TeacherTargets,
        cache: ImageCache | None = None,
        views: int = 0,
        view_transform: ImageTransform | None = None,
    ):
        if views and view_transform is None:
            raise ValueError("views > 0 needs a view_transform (the student's eval transform)")
        self.data = data
        self.transform = transform
        self.targets = targets
        self.cache = cache or ImageCache(enabled=False, max_side=10**9)
        self.views = views
        self.view_transform = view_transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, j: int) -> PairItem:
        image = self.data.caption_image[j]
        img = self.cache.get(self.data.image_paths[image])
        pixels, view = student_view(img, image, self.transform, self.views, self.view_transform)
        teacher_image, teacher_text = self.targets.pair_rows(image, view, j)
        return PairItem(pixels, self.data.captions[j], j, image, view, teacher_image, teacher_text)


def student_view(
    img: Image.Image, image: int, transform: Callable, views: int = 0, view_transform: ImageTransform | None = None
) -> tuple[torch.Tensor, int]:
    """The student's pixels ``(3, H, W)`` of image row ``image`` and which view they are.

    With ``views=V > 0`` the view is drawn uniformly from ``0..V`` with ``random`` (0:
    ``view_transform`` itself; ``v >= 1``: the fixed crop ``v - 1``), else it is 0 and
    ``transform`` applies.
    """
    if not views:
        return transform(img), 0
    view = random.randint(0, views)
    if view == 0:
        return view_transform(img), 0
    return view_transform.view(img, view_of(image, view - 1)), view


def collate_images(batch: list[tuple[int, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack :class:`ImageDataset` items into ``(index (B,), pixels (B, 3, H, W))``."""
    index, pixels = zip(*batch, strict=True)
    return torch.tensor(index, dtype=torch.long), torch.stack(pixels)
