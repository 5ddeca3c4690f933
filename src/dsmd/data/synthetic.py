"""A generated image-caption dataset (coloured shapes), for tests and quick experiments.

``write_synthetic_dataset(folder)`` draws PNGs with PIL and writes ``manifest.jsonl`` beside
them, so the pipeline runs end to end with no download.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "cross")


def _draw(shape: str, colour: tuple, background: tuple, size: int, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(img)
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        w = max(2, r // 3)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    return img


def write_synthetic_dataset(
    folder: str | Path, num_images: int = 24, captions_per_image: int = 2, size: int = 64, seed: int = 0
) -> Path:
    """Draw ``num_images`` PNGs into ``folder`` and write ``folder/manifest.jsonl``.

    Returns:
        The manifest's path (use ``data.kind=manifest data.manifest=PATH``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = list(COLOURS)
    lines = []
    for i in range(num_images):
        shape = SHAPES[i % len(SHAPES)]
        colour, background = rng.sample(names, 2)
        img = _draw(shape, COLOURS[colour], COLOURS[background], size, rng)
        path = folder / f"img_{i:04d}.png"
        img.save(path)
        templates = [
            f"a {colour} {shape} on a {background} background",
            f"a {background} picture with a {colour} {shape}",
            f"{colour} {shape}, {background} backdrop",
            f"the {shape} is {colour} and the background is {background}",
            f"a drawing of a {colour} {shape}",
        ]
        lines.append({"image": path.name, "captions": templates[:captions_per_image]})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest
