"""ImageTransform: center crop (CLIP, DeiT) versus squash to a square (ViT, BEiT-3)."""

import numpy as np
import torch
from PIL import Image

from dsmd.data.transforms import ImageTransform


def _three_bands() -> Image.Image:
    """A 3:1 image: red, green and blue thirds from left to right."""
    arr = np.zeros((10, 30, 3), dtype=np.uint8)
    arr[:, :10, 0] = arr[:, 10:20, 1] = arr[:, 20:, 2] = 255
    return Image.fromarray(arr)


def test_crop_keeps_the_center_and_squash_keeps_everything():
    plain = dict(size=6, mean=(0.0,) * 3, std=(1.0,) * 3, resample="bilinear")
    cropped = ImageTransform(**plain)(_three_bands())
    squashed = ImageTransform(**plain, crop=False)(_three_bands())
    assert cropped.shape == squashed.shape == (3, 6, 6)
    # The center crop of a 3:1 image is its green middle third (edges blurred by resampling).
    assert torch.allclose(cropped[1, :, 2:4], torch.ones(6, 2), atol=1e-6)
    assert cropped[0].max() < 0.5 and cropped[2].max() < 0.5
    # Squashed, the first columns are red and the last blue.
    assert torch.allclose(squashed[0, :, 0], torch.ones(6), atol=1e-6)
    assert torch.allclose(squashed[2, :, -1], torch.ones(6), atol=1e-6)
    assert ImageTransform(crop=False).to_dict()["crop"] is False
