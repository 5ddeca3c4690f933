"""Inputs to check an export on: images and captions of the student's own data when they can be
read here, else generated ones (coloured shapes and their descriptions)."""

from __future__ import annotations

from PIL import Image, ImageDraw

from dsmd.config import RunConfig
from dsmd.data.datasets import load_split
from dsmd.data.images import load_image
from dsmd.errors import DsmdError

_COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (240, 210, 30)}


def _generated(count: int) -> tuple[list[Image.Image], list[str]]:
    images, captions = [], []
    for i in range(count):
        name, colour = list(_COLOURS.items())[i % len(_COLOURS)]
        img = Image.new("RGB", (96 + 8 * i, 80), (250, 250, 250))
        ImageDraw.Draw(img).ellipse((10 + i, 10, 70 + i, 70), fill=colour)
        images.append(img)
        captions.append(f"a {name} circle on a white background, number {i}")
    return images, captions


def probe_inputs(cfg: RunConfig, count: int = 8) -> tuple[list[Image.Image], list[str], str]:
    """``count`` images and captions to compare two encoders on, and where they come from."""
    try:
        data = load_split(cfg.data, "val")
        images = [load_image(data.image_paths[i % data.num_images]) for i in range(count)]
        captions = [data.captions[i % len(data)] for i in range(count)]
        return images, captions, f"{count} images and captions of the run's val split"
    except DsmdError:
        images, captions = _generated(count)
        return images, captions, f"{count} generated images and captions (the run's data is not readable here)"
