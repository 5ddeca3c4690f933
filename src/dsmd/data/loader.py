"""torch datasets over :class:`~dsmd.data.datasets.CaptionedImages`.

Training pairs are looked up by index (caption ``j`` and the row of its image), so the loader
can shuffle and the teacher's features are fetched from the feature store by the same index
(the published code took teacher rows by batch position and so could not shuffle).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from dsmd.data.datasets import CaptionedImages
from dsmd.data.transforms import load_image


class ImageCache:
    """Decoded images, downsized so the short side is at most ``max_side``, kept in memory.

    Decoding and resizing a PNG costs more than the rest of a small model's input pipeline;
    small datasets (the demo's 430 stamps) fit in memory many times over.
    """

    def __init__(self, max_side: int = 320, enabled: bool = True):
        self.max_side = max_side
        self.enabled = enabled
        self._images: dict[str, Image.Image] = {}

    def get(self, path: str) -> Image.Image:
        img = self._images.get(path)
        if img is None:
            img = load_image(path)
            short = min(img.size)
            if short > self.max_side:
                scale = self.max_side / short
                img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.Resampling.BICUBIC)
            if self.enabled:
                self._images[path] = img
        return img


class ImageDataset(Dataset):
    """The unique images of a split; item ``i`` is ``(i, pixels (3, H, W))``."""

    def __init__(self, data: CaptionedImages, transform: Callable, cache: ImageCache | None = None):
        self.data = data
        self.transform = transform
        self.cache = cache or ImageCache(enabled=False, max_side=10**9)

    def __len__(self) -> int:
        return self.data.num_images

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, self.transform(self.cache.get(self.data.image_paths[i]))


class PairDataset(Dataset):
    """Image-caption pairs; item ``j`` is ``(pixels (3, H, W), caption, j, image row)``."""

    def __init__(self, data: CaptionedImages, transform: Callable, cache: ImageCache | None = None):
        self.data = data
        self.transform = transform
        self.cache = cache or ImageCache(enabled=False, max_side=10**9)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, str, int, int]:
        image = self.data.caption_image[j]
        pixels = self.transform(self.cache.get(self.data.image_paths[image]))
        return pixels, self.data.captions[j], j, image


def collate_pairs(batch: list[tuple[torch.Tensor, str, int, int]]) -> dict:
    """Stack a list of :class:`PairDataset` items.

    Returns:
        ``pixel_values (B, 3, H, W)``, ``captions`` (list of B str), ``caption_index (B,)``,
        ``image_index (B,)`` (int64).
    """
    pixels, captions, caption_index, image_index = zip(*batch, strict=True)
    return {
        "pixel_values": torch.stack(pixels),
        "captions": list(captions),
        "caption_index": torch.tensor(caption_index, dtype=torch.long),
        "image_index": torch.tensor(image_index, dtype=torch.long),
    }


def collate_images(batch: list[tuple[int, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack :class:`ImageDataset` items into ``(index (B,), pixels (B, 3, H, W))``."""
    index, pixels = zip(*batch, strict=True)
    return torch.tensor(index, dtype=torch.long), torch.stack(pixels)
